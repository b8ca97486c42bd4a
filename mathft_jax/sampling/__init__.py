"""Sampling: host-side batching of prompts (`batching`, NumPy only), prefill + while-loop
decoding with a KV cache (`decoding`), and continuous batching (`engine`). The `infer`
command drives them."""
