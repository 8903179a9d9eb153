# meshos: `make image BOARD=rpi3`, `make test`, `make qemu BOARD=rpi3`, `make bench`.
# Every target installs what it needs first (ci/setup-host.sh), so a fresh Debian machine works.

BOARD ?= rpi3
OUT ?= out
MESHIMG := target/debug/meshimg

.PHONY: all setup meshimg image qemu lock plan test bench clean

all: image

setup:
	@ci/setup-host.sh

meshimg: setup
	cargo build --locked -p meshimg

image: meshimg
	$(MESHIMG) build $(BOARD) --out $(OUT)

qemu: meshimg
	$(MESHIMG) qemu $(BOARD) --out $(OUT)

plan: meshimg
	$(MESHIMG) plan $(BOARD) --out $(OUT)

lock: meshimg
	$(MESHIMG) lock $(BOARD)

test: meshimg
	ci/test.sh

bench: meshimg
	ci/bench.sh $(BOARD)

clean:
	rm -rf $(OUT) target/node-firmware
