//! The deployment files checked with the tools that consume them: every Kubernetes
//! overlay rendered by `kubectl kustomize` and validated against the schemas of two
//! Kubernetes versions, its configuration parsed by nodepulse itself; the fleet rules
//! through `promtool check rules` and `promtool test rules`; the dashboard's and the
//! rules' queries against nodepulse's metric catalogue; the collector's pipelines.
//! No root needed.

mod collector;
mod dashboard;
mod kubernetes;
mod prometheus;
