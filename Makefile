# The two commands: `make up` (set up, build every model, serve, verify) and `make test`.
PYTHON ?= python3
VENV := .venv
# The CPU build of torch where pip's find-links hold it; a GPU host may set TORCH=torch.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup up test down status clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[local,demo,test,bench,ingest]"
	# torchvision for nv-ingest's YOLOX client in the tests only, kept off the environment's path
	# (beside the CPU torch its import fails, which would break transformers): tests/torchvision_nms.py
	$(VENV)/bin/pip install --quiet --no-deps --upgrade --target $(VENV)/client-torchvision "torchvision==0.28.*"
	touch $(STAMP)

setup: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/python -m scripts.stack up

down: $(STAMP)
	$(VENV)/bin/python -m scripts.stack down

status: $(STAMP)
	$(VENV)/bin/python -m scripts.stack status

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf build scratch
