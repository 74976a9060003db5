# The local e2e control plane (e2e/README.md). Included by the top-level Makefile.
GOGRID_CLUSTER_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: cluster-up cluster-down

## cluster-up: start etcd, the Kubernetes control plane, kwok, fake GPU nodes and GoGrid (root)
cluster-up:
	$(GOGRID_CLUSTER_DIR)/up.sh

## cluster-down: stop everything cluster-up started and remove e2e/.run (keeps the build cache)
cluster-down:
	$(GOGRID_CLUSTER_DIR)/down.sh
