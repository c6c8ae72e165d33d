.PHONY: build test test-short demo bench-cni clean

build:
	./scripts/build.sh

test:
	./scripts/test.sh

test-short:
	./scripts/test.sh -short

demo:
	./scripts/demo.sh

bench-cni:
	./scripts/bench-cni.sh

clean:
	rm -rf bin
