"""fabriek's Triton attention kernels for a paged KV cache, and their vLLM plugin.

Stands alone on torch and triton; only the plugin module (``kernels.vllm_backend``)
imports vLLM. ``kernels/README.md`` explains the layout, the grid and the tests.

Note: a Hugging Face package is also called ``kernels``; transformers probes for it
with ``importlib.metadata``, which looks for a *distribution* named ``kernels``. This
package ships inside the ``fabriek`` distribution, so that probe stays False
(``tests/test_environment.py`` checks it).
"""

from kernels.ops.kv_cache_write import write_kv_cache
from kernels.ops.paged_attention import LaunchConfig, paged_attention

__all__ = ["LaunchConfig", "paged_attention", "write_kv_cache"]
