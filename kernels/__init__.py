"""fabriek's Triton attention kernels for a paged KV cache, and their vLLM plugin.

Stands alone on torch and triton; only the plugin module imports vLLM. The kernels
land with issue 6.

Note: a Hugging Face package is also called ``kernels``; transformers probes for it
with ``importlib.metadata``, which looks for a *distribution* named ``kernels``. This
package ships inside the ``fabriek`` distribution, so that probe stays False
(``tests/test_environment.py`` checks it).
"""
