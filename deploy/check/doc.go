// Command check keeps deploy/ honest where no container engine or cluster
// runs: it renders the Kubernetes manifests with kustomize and decodes every
// object strictly into its API type, validates the compose files with
// docker-compose, lints the alert rules and the dashboard, and checks that
// every metric they query is one the services really export.
//
//	go run ./deploy/check static                 # kustomize + compose + rules (no network)
//	go run ./deploy/check kustomize              # render base and overlays, strict decode, policy
//	go run ./deploy/check compose                # docker-compose config -q, Dockerfile, wiring
//	go run ./deploy/check rules [-write]         # alerts, runbook anchors, dashboard; -write regenerates the PrometheusRule
//	go run ./deploy/check metrics -url http://127.0.0.1:9200/metrics -url ...
//
// Every subcommand takes -repo (default: the repository containing the
// working directory).
package main
