# meshos: `make image BOARD=rpi3`, `make test`, `make qemu BOARD=rpi3`, `make bench`.
# Tests in tiers (docs/testing.md): `make check` (minutes), `make test` (what CI runs),
# `make test-all` (everything, for a release).
# Every target installs what it needs first (ci/setup-host.sh), so a fresh Debian machine works.

BOARD ?= rpi3
OUT ?= out
MESHIMG := target/debug/meshimg

.PHONY: all setup setup-build meshimg image qemu lock plan check test test-all bench lab lab-clean clean

all: image

# What building needs (also what the Dockerfile installs), and what testing needs besides.
setup-build:
	@ci/setup-host.sh build

setup: setup-build
	@ci/setup-host.sh

meshimg: setup-build
	cargo build --locked -p meshimg

image: meshimg
	$(MESHIMG) build $(BOARD) --out $(OUT)

qemu: setup meshimg
	$(MESHIMG) qemu $(BOARD) --out $(OUT)

plan: meshimg
	$(MESHIMG) plan $(BOARD) --out $(OUT)

lock: meshimg
	$(MESHIMG) lock $(BOARD)

check: setup meshimg
	TIER=check ci/test.sh

test: setup meshimg
	TIER=test ci/test.sh

test-all: setup meshimg
	@ci/setup-host.sh all
	TIER=all ci/test.sh

bench: setup meshimg
	ci/bench.sh $(BOARD)

# The mesh lab (docs/lab.md): TOPOLOGY=FILE or FROM=URL, SCENARIO=rollout, BOOT_TIME=S.
lab: setup meshimg
	ci/lab.sh

# Removes what a killed lab left behind (its namespaces and their processes).
lab-clean:
	cargo build --locked -p meshlab
	$(if $(filter 0,$(shell id -u)),,sudo) target/debug/meshlab clean $(if $(LAB_NAME),--name $(LAB_NAME))

clean:
	rm -rf $(OUT) target/node-firmware
