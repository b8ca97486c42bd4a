"""`python -m mathft_jax.models --gin_file=gin_configs/models/palm_62b.gin`: one JSON line
with params, training flops_per_token and kv_cache_bytes_per_token (shapes only)."""
import json

from absl import app, flags

from mathft_jax import gin_utils
from mathft_jax.models import sizes

FLAGS = flags.DEFINE_multi_string("gin_file", [], "Gin files with a DecoderConfig.")
BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length for the attention FLOPs term.")


def main(argv):
    del argv
    gin_utils.parse_gin(FLAGS.value, BINDINGS.value)
    cfg = gin_utils.model_config().validate()
    print(json.dumps(sizes.summary(cfg, SEQ_LEN.value)))


if __name__ == "__main__":
    app.run(main)
