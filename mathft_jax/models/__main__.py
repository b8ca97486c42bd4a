"""`python -m mathft_jax.models --gin_file=gin_configs/models/palm_62b.gin`: one JSON line
with params, training flops_per_token and kv_cache_bytes_per_token (shapes only)."""
import json

from absl import app, flags

from mathft_jax.core import entry, gin_utils
from mathft_jax.models import sizes
from mathft_jax.models.config import DecoderConfig

SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length for the attention FLOPs term.")


def main(argv):
    del argv
    gin_utils.parse_gin(entry.GIN_FILES.value, entry.GIN_BINDINGS.value,
                        entry.GIN_SEARCH_PATHS.value)
    cfg = DecoderConfig().validate()
    print(json.dumps(sizes.summary(cfg, SEQ_LEN.value)))


if __name__ == "__main__":  # `python -m` runs this file once: no second copy to guard against
    app.run(main)
