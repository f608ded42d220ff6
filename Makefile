# mesh — developer targets. `make help` lists them.

SHELL := /bin/bash
LAB   := tests/lab/lab.sh

# Number of hosts in the test lab.
N ?= 5
# Debian release of the lab hosts: trixie (Debian 13) or bookworm (Debian 12).
SUITE ?= $(or $(LAB_SUITE),trixie)

# The seed's variable names, for the wrappers below.
INVENTORY       ?= inventory/inventory.yml
FIRST_IP        ?=
DOCKERFILES_PATH ?= ../dockerfiles
SERVICE         ?=
GROUP           ?=
MESH            := target/release/mesh

.PHONY: help prereqs lab-image lab lab-down build garage test demo bench man \
	nodes services services-up deploy care FORCE

help: ## List targets and their variables
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  %-12s %s\n", $$1, $$2 }'
	@echo "Variables:"
	@echo "  N=$(N)          number of lab hosts (lab, demo; bench defaults to 50)"
	@echo "  SUITE=$(SUITE)  Debian release of the lab hosts: trixie (13) or bookworm (12) (lab-image, lab, demo)"
	@echo "  INVENTORY=$(INVENTORY)  FIRST_IP=  DOCKERFILES_PATH=  SERVICE=  GROUP=  (wrappers)"

prereqs: ## Install/start what the lab needs (docker, debootstrap, ...)
	tests/lab/prereqs.sh

lab-image: prereqs ## Build the lab image mesh-lab:SUITE-1, trixie by default (once)
	$(LAB) image --suite $(SUITE)

lab: prereqs ## Start lab hosts lab-1..lab-N (N=5) in slot 1; writes target/lab/lab/inventory.yml
	$(LAB) up --name lab --count $(N) --slot 1 --suite $(SUITE)

lab-down: ## Remove the lab hosts started by `make lab`
	$(LAB) down --name lab

$(MESH): FORCE
	cargo build --release --quiet

build: $(MESH) ## Build target/release/mesh

man: $(MESH) ## Man pages generated from --help, in target/man
	$(MESH) man target/man

garage: ## Build the real garage binary for the lab once (cached in ~/.cache/mesh)
	tests/lab/garage.sh >/dev/null

test: prereqs garage ## Run every test: unit tests and mesh against real lab hosts
	cargo test

demo: N = 3
demo: lab $(MESH) garage ## mesh nodes on N=3 lab hosts (Docker, overlay, garage), then the converged re-run
	LAB_SUITE=$(SUITE) tests/lab/demo.sh

bench: N = 50
bench: prereqs $(MESH) ## Cold and warm wall times of a nodes-style step on N=50 lab hosts
	tests/bench/bench.sh $(N)

# Wrappers with the seed's variable names (inventory: INVENTORY=...).
nodes: $(MESH) ## mesh nodes --first-ip $(FIRST_IP)
	$(MESH) -i $(INVENTORY) nodes $(if $(FIRST_IP),--first-ip $(FIRST_IP))

services: $(MESH) ## mesh services --dockerfiles $(DOCKERFILES_PATH)
	$(MESH) -i $(INVENTORY) services --dockerfiles $(DOCKERFILES_PATH)

services-up: $(MESH) ## mesh services-up
	$(MESH) -i $(INVENTORY) services-up

deploy: $(MESH) ## mesh deploy --service $(SERVICE) --dockerfiles $(DOCKERFILES_PATH)
	$(MESH) -i $(INVENTORY) deploy --service $(SERVICE) --dockerfiles $(DOCKERFILES_PATH)

care: $(MESH) ## mesh care --group '$(GROUP)' --dockerfiles $(DOCKERFILES_PATH)
	$(MESH) -i $(INVENTORY) care --group '$(GROUP)' --dockerfiles $(DOCKERFILES_PATH)
