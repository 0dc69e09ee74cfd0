//! sluice-node-agent: runs the local cluster's pods as processes (see docs/local-cluster.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use xtask::node_agent::agent::{Agent, AgentConfig, RunMode};
use xtask::node_agent::images::ImageMap;
use xtask::node_agent::kubelet_api::KubeletApiConfig;
use xtask::node_agent::network::Ipv4Cidr;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Containers run as local processes in per-pod network namespaces.
    Processes,
    /// No processes: pods are Ready at once with unserved IPs (scale tests).
    Fake,
}

#[derive(Debug, Parser)]
#[command(about = "Minimal kubelet for the sluice local cluster")]
struct Args {
    /// Admin kubeconfig used by the agent itself.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "sluice-node")]
    node_name: String,
    #[arg(long, value_enum, default_value = "processes")]
    mode: Mode,
    /// Image -> program mapping file.
    #[arg(long, default_value = "hack/cluster/images.yaml")]
    images: PathBuf,
    /// Base for relative program paths in the image map.
    #[arg(long, default_value = ".")]
    repo_root: PathBuf,
    /// Pod dirs and logs go under here.
    #[arg(long, default_value = ".cluster")]
    state_dir: PathBuf,
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: Ipv4Cidr,
    #[arg(long, default_value = "sluice0")]
    bridge: String,
    /// The apiserver's port, reached by pods on the bridge address.
    #[arg(long, default_value_t = 16443)]
    apiserver_port: u16,
    /// Cluster CA written into the pods' kubeconfigs.
    #[arg(long, default_value = ".cluster/pki/ca.crt")]
    ca_file: PathBuf,
    #[arg(long, default_value_t = 250)]
    max_pods: u32,
    /// Kubelet version reported in the Node status.
    #[arg(long, default_value = "v1.34.4")]
    kubelet_version: String,
    /// Serving certificate for the kubelet API (`kubectl logs`); with --kubelet-key
    /// and --kubelet-client-ca it is served on the bridge address.
    #[arg(long, requires_all = ["kubelet_key", "kubelet_client_ca"])]
    kubelet_cert: Option<PathBuf>,
    #[arg(long)]
    kubelet_key: Option<PathBuf>,
    /// CA of the apiserver's kubelet client certificate.
    #[arg(long)]
    kubelet_client_ca: Option<PathBuf>,
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let absolute =
        |p: PathBuf| std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()));
    let repo_root = absolute(args.repo_root)?;
    let images = ImageMap::load(&args.images, &repo_root)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let client_config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(client_config)?;
    let pod_cidr = args.pod_cidr;
    let kubelet_api = match (args.kubelet_cert, args.kubelet_key, args.kubelet_client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Some(KubeletApiConfig {
            listen: std::net::SocketAddr::from((
                std::net::Ipv4Addr::from(pod_cidr.network() + 1),
                args.kubelet_port,
            )),
            cert,
            key,
            client_ca,
            logs_dir: absolute(args.state_dir.clone())?.join("logs/pods"),
        }),
        _ => None,
    };
    let config = AgentConfig {
        node_name: args.node_name,
        mode: match args.mode {
            Mode::Processes => RunMode::Processes,
            Mode::Fake => RunMode::Fake,
        },
        images,
        state_dir: absolute(args.state_dir)?,
        pod_cidr: args.pod_cidr,
        bridge: args.bridge,
        apiserver_port: args.apiserver_port,
        ca_file: absolute(args.ca_file)?,
        max_pods: args.max_pods,
        kubelet_version: args.kubelet_version,
        kubelet_api,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Agent::new(client, config).run(shutdown).await
}
