//! The agent loop: registers a Node, keeps its Lease fresh, and runs the pods
//! bound to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Node, Pod, PodCondition, PodIP, PodStatus, Secret,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Resource;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::Child;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::containers::{self, LaunchSpec};
use super::images::{ImageMap, ImageRef};
use super::kubelet_api::{self, KubeletApiConfig};
use super::network::{self, IpAllocator, Ipv4Cidr, PodNetNames};
use super::probe::ProbeSpec;

const FIELD_MANAGER: &str = "sluice-node-agent";
/// Taint on fake-mode nodes; scale-test pods tolerate it.
pub const FAKE_TAINT: &str = "node.sluice.dev/fake";
const NETNS_PREFIX: &str = "sluice-";
const LEASE_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(500);
const TOKEN_SECONDS: i64 = 24 * 3600;
/// Pod tokens are re-issued well before they expire.
const TOKEN_REFRESH: Duration = Duration::from_secs(3600);

/// How pods are "run".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Each container is a local process in the pod's network namespace.
    Processes,
    /// Nothing runs: pods are Ready at once with an address that nobody serves
    /// (kwok-style, for scale tests of the control plane).
    Fake,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub mode: RunMode,
    pub images: ImageMap,
    /// `.cluster/` of the repository: pod dirs and logs live under it.
    pub state_dir: PathBuf,
    pub pod_cidr: Ipv4Cidr,
    pub bridge: String,
    /// Port of the apiserver on the bridge address, for the pods' kubeconfigs.
    pub apiserver_port: u16,
    pub ca_file: PathBuf,
    pub max_pods: u32,
    /// Reported as the Node's kubelet version (the control plane's, so skew checks pass).
    pub kubelet_version: String,
    /// Serves `kubectl logs` when set (processes mode only).
    pub kubelet_api: Option<KubeletApiConfig>,
}

impl AgentConfig {
    /// The host end of the bridge: the first address of the pod CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.pod_cidr.network() + 1)
    }

    /// Real pods use the lower half of the CIDR, fake ones the upper half, so one
    /// agent of each kind can share a cluster without handing out the same IP.
    fn allocator(&self) -> IpAllocator {
        let (network, broadcast) = (self.pod_cidr.network(), self.pod_cidr.broadcast());
        let middle = network + (broadcast - network) / 2;
        let (first, last) = match self.mode {
            RunMode::Processes => (network + 2, middle),
            RunMode::Fake => (middle + 1, broadcast - 1),
        };
        IpAllocator::new(self.pod_cidr, Ipv4Addr::from(first), Ipv4Addr::from(last))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum RunState {
    Waiting { reason: String, message: String },
    Running { started_at: Timestamp },
    Terminated(Exit),
}

#[derive(Debug, Clone, PartialEq)]
struct Exit {
    code: i32,
    reason: String,
    started_at: Option<Timestamp>,
    finished_at: Timestamp,
}

struct ContainerRuntime {
    spec: Container,
    child: Option<Child>,
    pid: Option<u32>,
    state: RunState,
    last_exit: Option<Exit>,
    restart_count: i32,
    next_start: Instant,
    ever_started: bool,
    ready: Arc<AtomicBool>,
    /// Cleared by a failing liveness probe; the container is then killed and restarted.
    live: Arc<AtomicBool>,
    probe_tasks: Vec<JoinHandle<()>>,
}

impl ContainerRuntime {
    fn new(spec: Container) -> Self {
        Self {
            spec,
            child: None,
            pid: None,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_exit: None,
            restart_count: 0,
            next_start: Instant::now(),
            ever_started: false,
            ready: Arc::new(AtomicBool::new(false)),
            live: Arc::new(AtomicBool::new(true)),
            probe_tasks: Vec::new(),
        }
    }

    fn stop_probe(&mut self) {
        for task in self.probe_tasks.drain(..) {
            task.abort();
        }
        self.ready.store(false, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, RunState::Running { .. }) && self.ready.load(Ordering::Relaxed)
    }
}

struct PodRuntime {
    namespace: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    net: Option<PodNetNames>,
    dir: PathBuf,
    kubeconfig: Option<PathBuf>,
    token_written: Option<Instant>,
    containers: Vec<ContainerRuntime>,
    start_time: Timestamp,
    /// When SIGTERM was sent, and the grace period before SIGKILL.
    terminating: Option<(Instant, Duration)>,
    killed: bool,
    finished: bool,
    /// Condition type -> (status, last transition).
    conditions: BTreeMap<&'static str, (bool, Timestamp)>,
    last_patched: Option<serde_json::Value>,
}

impl PodRuntime {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn set_condition(&mut self, kind: &'static str, value: bool) {
        let now = Timestamp::now();
        let entry = self.conditions.entry(kind).or_insert((value, now));
        if entry.0 != value {
            *entry = (value, now);
        }
    }

    fn signal_all(&mut self, signal: i32) {
        for c in &mut self.containers {
            c.stop_probe();
            if let (Some(pid), Some(_)) = (c.pid, c.child.as_ref()) {
                containers::signal_group(pid, signal);
            }
        }
    }

    /// Reaps exited processes; true once no process of the pod is left.
    fn all_stopped(&mut self) -> bool {
        let mut all = true;
        for c in &mut self.containers {
            if let Some(child) = c.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => c.child = None,
                    Ok(None) => all = false,
                }
            }
            if let Some(pid) = c.pid {
                if containers::group_alive(pid) {
                    all = false;
                }
            }
        }
        all
    }
}

pub struct Agent {
    client: Client,
    started_at: Timestamp,
    recorder: Recorder,
    config: AgentConfig,
    pods: HashMap<String, PodRuntime>,
    ips: IpAllocator,
    pods_api: Api<Pod>,
}

impl Agent {
    pub fn new(client: Client, config: AgentConfig) -> Self {
        let reporter = Reporter {
            controller: "sluice-node-agent".into(),
            instance: Some(config.node_name.clone()),
        };
        Self {
            started_at: Timestamp::now(),
            recorder: Recorder::new(client.clone(), reporter),
            ips: config.allocator(),
            pods_api: Api::all(client.clone()),
            client,
            config,
            pods: HashMap::new(),
        }
    }

    /// Runs until `shutdown` resolves, then stops every process and removes every
    /// namespace and veth it made.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Held for the agent's lifetime: the bridge, namespaces and port are machine-wide.
        let _machine_lock = match self.config.mode {
            RunMode::Processes => Some(lock_machine()?),
            RunMode::Fake => None,
        };
        if self.config.mode == RunMode::Processes {
            network::check_no_overlap(self.config.pod_cidr, &self.config.bridge).await?;
            self.remove_stale_namespaces().await;
            network::ensure_bridge(
                &self.config.bridge,
                self.config.gateway(),
                self.config.pod_cidr.prefix,
            )
            .await?;
        }
        std::fs::create_dir_all(self.config.state_dir.join("logs/pods"))?;
        if self.config.mode == RunMode::Processes {
            // Mount point for the pods' ServiceAccount files (an empty directory).
            std::fs::create_dir_all(containers::SERVICE_ACCOUNT_MOUNT)?;
        }
        let kubelet_api_task = match (&self.config.kubelet_api, self.config.mode) {
            (Some(api), RunMode::Processes) => Some(kubelet_api::spawn(api.clone()).await?),
            _ => None,
        };
        std::fs::create_dir_all(self.config.state_dir.join("pods"))?;

        self.register_node(true).await?;
        info!(node = %self.config.node_name, mode = ?self.config.mode, "node registered");

        let (store, writer) = reflector::store::<Pod>();
        let watch_config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node_name));
        let pod_stream = reflector(writer, watcher(self.pods_api.clone(), watch_config))
            .default_backoff()
            .applied_objects();
        let watch_task = tokio::spawn(async move {
            futures::pin_mut!(pod_stream);
            while let Some(event) = pod_stream.next().await {
                if let Err(e) = event {
                    warn!("pod watch: {e}");
                }
            }
        });
        store.wait_until_ready().await?;

        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            if last_heartbeat.elapsed() >= HEARTBEAT {
                if let Err(e) = self.register_node(false).await {
                    warn!("node heartbeat: {e}");
                }
                last_heartbeat = Instant::now();
            }
            let pods: Vec<Arc<Pod>> = store.state();
            self.reconcile(&pods).await;
        }
        info!("shutting down: stopping pods and removing their network namespaces");
        watch_task.abort();
        if let Some(task) = kubelet_api_task {
            task.abort();
        }
        self.shutdown().await;
        Ok(())
    }

    /// The kubelet API port advertised in the Node status (0: none served).
    fn kubelet_port(&self) -> u16 {
        match (&self.config.kubelet_api, self.config.mode) {
            (Some(api), RunMode::Processes) => api.listen.port(),
            _ => 0,
        }
    }

    /// Records a pod event (shown by `kubectl describe pod`) without blocking the loop.
    fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = pod.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!("publishing event: {e}");
            }
        });
    }

    async fn remove_stale_namespaces(&self) {
        for netns in network::list_netns(NETNS_PREFIX).await.unwrap_or_default() {
            for pid in network::netns_pids(&netns).await {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = network::ip(&["netns", "del", &netns]).await;
            info!(%netns, "removed namespace left by an earlier run");
        }
    }

    async fn shutdown(&mut self) {
        for pod in self.pods.values_mut() {
            pod.signal_all(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.pods.values_mut().all(|p| p.all_stopped()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = Time(Timestamp::now());
        for pod in self.pods.values_mut() {
            pod.signal_all(libc::SIGKILL);
            pod.all_stopped();
            // Nothing serves these pods any more: take them out of EndpointSlices now
            // rather than when the node lifecycle controller notices.
            if !pod.finished {
                let not_ready = json!({"status": {"conditions": [
                    {"type": "Ready", "status": "False", "reason": "NodeAgentStopped", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "False", "reason": "NodeAgentStopped", "lastTransitionTime": now},
                ]}});
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
                if let Err(e) = api
                    .patch_status(
                        &pod.name,
                        &PatchParams::default(),
                        &Patch::Strategic(not_ready),
                    )
                    .await
                {
                    debug!(pod = %pod.key(), "marking pod not ready: {e}");
                }
            }
            if let Some(net) = &pod.net {
                network::teardown_pod_netns(net).await;
            }
        }
        if self.config.mode == RunMode::Processes {
            if let Err(e) = network::delete_bridge(&self.config.bridge).await {
                warn!("removing bridge: {e}");
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        if self.config.mode == RunMode::Fake {
            // A fake node has nothing to come back to; its pods are garbage-collected.
            if let Err(e) = nodes
                .delete(&self.config.node_name, &DeleteParams::default())
                .await
            {
                warn!("deleting fake node: {e}");
            }
            return;
        }
        let status = json!({"status": {"conditions": [{
            "type": "Ready", "status": "False", "reason": "AgentStopped",
            "message": "sluice-node-agent stopped",
            "lastHeartbeatTime": Time(Timestamp::now()), "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        let _ = nodes
            .patch_status(
                &self.config.node_name,
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await;
    }

    async fn register_node(&self, first: bool) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.config.node_name;
        let now = Time(Timestamp::now());
        if first {
            // Fake nodes are tainted so that only pods meant for scale tests (which
            // tolerate the taint) land there, never the ones that should really run.
            let taints = match self.config.mode {
                RunMode::Processes => json!([]),
                RunMode::Fake => {
                    json!([{"key": FAKE_TAINT, "value": "true", "effect": "NoSchedule"}])
                }
            };
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "spec": {"taints": taints},
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.sluice.dev/mode": match self.config.mode { RunMode::Processes => "processes", RunMode::Fake => "fake" },
                }},
            });
            nodes
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(node),
                )
                .await?;
        }
        let capacity = json!({"cpu": "32", "memory": "64Gi", "pods": self.config.max_pods.to_string(), "ephemeral-storage": "100Gi"});
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": Time(self.started_at)})
        };
        let status = json!({"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": self.config.gateway().to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                condition("Ready", "True", "KubeletReady", "sluice-node-agent is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port()}},
            "nodeInfo": {
                "machineID": "sluice", "systemUUID": "sluice", "bootID": "sluice",
                "kernelVersion": "", "osImage": "sluice local processes",
                "containerRuntimeVersion": "sluice://0.1.0",
                "kubeletVersion": self.config.kubelet_version, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        // Conditions merge by type; they last changed when this agent started.
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
            .await?;

        let node = nodes.get(name).await?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("kube-node-lease".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid: node.uid().unwrap_or_default(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let mut lease_json = serde_json::to_value(&lease)?;
        lease_json["apiVersion"] = json!("coordination.k8s.io/v1");
        lease_json["kind"] = json!("Lease");
        leases
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(lease_json),
            )
            .await?;
        Ok(())
    }

    async fn reconcile(&mut self, pods: &[Arc<Pod>]) {
        let mut seen = HashSet::new();
        for pod in pods {
            let uid = pod.uid().unwrap_or_default();
            seen.insert(uid.clone());
            if let Err(e) = self.reconcile_pod(pod, &uid).await {
                warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "{e:#}");
            }
        }
        // Pods gone from the API (force-deleted elsewhere): stop them at once.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut pod) = self.pods.remove(&uid) {
                info!(pod = %pod.key(), "pod removed from the API; killing its processes");
                pod.signal_all(libc::SIGKILL);
                self.release(&mut pod).await;
            }
        }
    }

    async fn release(&mut self, pod: &mut PodRuntime) {
        if let Some(net) = pod.net.take() {
            network::teardown_pod_netns(&net).await;
        }
        self.ips.release(pod.ip);
    }

    async fn reconcile_pod(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !self.pods.contains_key(uid) {
            if deleting {
                return self.force_delete(pod, uid).await;
            }
            if matches!(phase, Some("Succeeded" | "Failed")) {
                return Ok(());
            }
            let runtime = self.start_pod(pod, uid).await?;
            self.pods.insert(uid.to_string(), runtime);
        }
        let Some(mut runtime) = self.pods.remove(uid) else {
            return Ok(());
        };
        let result = self.step_pod(pod, &mut runtime).await;
        if deleting && runtime.killed {
            self.release(&mut runtime).await;
            return self.force_delete(pod, uid).await;
        }
        self.pods.insert(uid.to_string(), runtime);
        result
    }

    async fn force_delete(&self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn start_pod(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<PodRuntime> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let previous_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = self.ips.allocate(previous_ip)?;
        let short_uid: String = uid.chars().take(8).collect();
        let dir = self
            .config
            .state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{short_uid}"));
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(ContainerRuntime::new)
            .collect();
        let mut runtime = PodRuntime {
            namespace,
            name,
            uid: uid.to_string(),
            ip,
            net: None,
            dir,
            kubeconfig: None,
            token_written: None,
            containers,
            start_time: Timestamp::now(),
            terminating: None,
            killed: false,
            finished: false,
            conditions: BTreeMap::new(),
            last_patched: None,
        };
        if self.config.mode == RunMode::Processes {
            std::fs::create_dir_all(&runtime.dir)?;
            let names = PodNetNames::for_uid(NETNS_PREFIX, uid);
            if let Err(e) = network::setup_pod_netns(
                &names,
                &self.config.bridge,
                ip,
                self.config.pod_cidr.prefix,
            )
            .await
            {
                network::teardown_pod_netns(&names).await;
                self.ips.release(ip);
                return Err(e.into());
            }
            runtime.net = Some(names);
        }
        info!(pod = %runtime.key(), %ip, "pod started");
        Ok(runtime)
    }

    /// Writes a kubeconfig referring to a file with a bound token of the pod's
    /// ServiceAccount (also called to refresh that token).
    async fn write_pod_kubeconfig(
        &self,
        pod: &Pod,
        runtime: &PodRuntime,
    ) -> anyhow::Result<PathBuf> {
        let spec = pod.spec.as_ref();
        let account = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let accounts: Api<ServiceAccount> =
            Api::namespaced(self.client.clone(), &runtime.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(runtime.name.clone()),
                    uid: Some(runtime.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "token for ServiceAccount {}/{account}: {e}",
                    runtime.namespace
                )
            })?
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow::anyhow!("TokenRequest returned no token"))?;
        // The same files a kubelet mounts for in-cluster config.
        let sa_dir = runtime.dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir)?;
        std::fs::copy(&self.config.ca_file, sa_dir.join("ca.crt"))?;
        std::fs::write(sa_dir.join("namespace"), &runtime.namespace)?;
        let token_path = sa_dir.join("token");
        let staged = sa_dir.join("token.tmp");
        std::fs::write(&staged, token)?;
        std::fs::rename(&staged, &token_path)?;
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "sluice-local", "cluster": {
                "server": format!("https://{}:{}", self.config.gateway(), self.config.apiserver_port),
                "certificate-authority": self.config.ca_file.display().to_string(),
            }}],
            // A token file, not an inline token: clients re-read it, so refreshing
            // the file keeps long-running pods authenticated.
            "users": [{"name": account, "user": {"tokenFile": token_path.display().to_string()}}],
            "contexts": [{"name": "pod", "context": {
                "cluster": "sluice-local", "user": account, "namespace": runtime.namespace,
            }}],
            "current-context": "pod",
        });
        let path = runtime.dir.join("kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        Ok(path)
    }

    async fn step_pod(&self, pod: &Pod, runtime: &mut PodRuntime) -> anyhow::Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(pod, runtime);
            if runtime.killed {
                // The pod is force-deleted next; a final status would be wasted.
                return Ok(());
            }
        } else if self.config.mode == RunMode::Fake {
            for c in &mut runtime.containers {
                if !matches!(c.state, RunState::Running { .. }) {
                    c.state = RunState::Running {
                        started_at: Timestamp::now(),
                    };
                    c.ever_started = true;
                    c.ready.store(true, Ordering::Relaxed);
                }
            }
        } else if !runtime.finished {
            let wants_token = spec.automount_service_account_token != Some(false);
            let token_stale = runtime
                .token_written
                .is_none_or(|at| at.elapsed() >= TOKEN_REFRESH);
            if wants_token && runtime.kubeconfig.is_some() && token_stale {
                match self.write_pod_kubeconfig(pod, runtime).await {
                    Ok(_) => runtime.token_written = Some(Instant::now()),
                    Err(e) => warn!(pod = %runtime.key(), "refreshing the pod's token: {e:#}"),
                }
            }
            if wants_token && runtime.kubeconfig.is_none() {
                match self.write_pod_kubeconfig(pod, runtime).await {
                    Ok(path) => {
                        runtime.kubeconfig = Some(path);
                        runtime.token_written = Some(Instant::now());
                    }
                    Err(e) => {
                        for c in &mut runtime.containers {
                            c.state = RunState::Waiting {
                                reason: "CreateContainerConfigError".into(),
                                message: format!("{e:#}"),
                            };
                        }
                    }
                }
            }
            if !wants_token || runtime.kubeconfig.is_some() {
                let policy = spec
                    .restart_policy
                    .as_deref()
                    .unwrap_or("Always")
                    .to_string();
                for index in 0..runtime.containers.len() {
                    self.step_container(pod, runtime, index, &policy).await;
                }
            }
        }
        self.update_status(pod, runtime).await
    }

    /// SIGTERM on the first call, SIGKILL once the grace period is over; sets
    /// `killed` when no process of the pod is left.
    fn terminate(&self, pod: &Pod, runtime: &mut PodRuntime) {
        if runtime.terminating.is_none() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or(pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30);
            info!(pod = %runtime.key(), grace, "pod deleted: sending SIGTERM");
            for c in runtime.containers.iter().filter(|c| c.child.is_some()) {
                self.event(
                    pod,
                    false,
                    "Killing",
                    format!("Stopping container {}", c.spec.name),
                );
            }
            runtime.signal_all(libc::SIGTERM);
            runtime.terminating = Some((Instant::now(), Duration::from_secs(grace)));
        }
        if runtime.all_stopped() {
            runtime.killed = true;
            for c in &mut runtime.containers {
                if let RunState::Running { started_at } = c.state {
                    c.state = RunState::Terminated(Exit {
                        code: 143,
                        reason: "Completed".into(),
                        started_at: Some(started_at),
                        finished_at: Timestamp::now(),
                    });
                }
            }
            return;
        }
        if let Some((since, grace)) = runtime.terminating {
            if since.elapsed() >= grace {
                warn!(pod = %runtime.key(), "grace period over: sending SIGKILL");
                runtime.signal_all(libc::SIGKILL);
            }
        }
    }

    async fn step_container(
        &self,
        pod: &Pod,
        runtime: &mut PodRuntime,
        index: usize,
        policy: &str,
    ) {
        let pod_ip = runtime.ip;
        let container = &mut runtime.containers[index];
        // Reap an exited process and decide about a restart.
        if let Some(child) = container.child.as_mut() {
            let exited = match child.try_wait() {
                Ok(Some(status)) => Some(status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + status.signal().unwrap_or(0)
                })),
                Ok(None) => None,
                Err(_) => Some(-1),
            };
            if exited.is_none() && !container.live.load(Ordering::Relaxed) {
                if let Some(pid) = container.pid {
                    warn!(pod = %format!("{}/{}", runtime.namespace, runtime.name), container = %container.spec.name, "liveness probe failed: killing the container");
                    self.event(
                        pod,
                        true,
                        "Unhealthy",
                        format!(
                            "Liveness probe failed; container {} will be restarted",
                            container.spec.name
                        ),
                    );
                    containers::signal_group(pid, libc::SIGKILL);
                }
            }
            if let Some(code) = exited {
                container.child = None;
                container.stop_probe();
                if let Some(pid) = container.pid.take() {
                    // Children it left behind die with it, as in a container.
                    containers::signal_group(pid, libc::SIGKILL);
                }
                let started_at = match container.state {
                    RunState::Running { started_at } => Some(started_at),
                    _ => None,
                };
                let exit = Exit {
                    code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    started_at,
                    finished_at: Timestamp::now(),
                };
                info!(pod = %format!("{}/{}", runtime.namespace, runtime.name), container = %container.spec.name, code, "container exited");
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    let ran_long = started_at
                        .is_some_and(|s| Timestamp::now().duration_since(s).as_secs() > 60);
                    let delay = if ran_long {
                        containers::restart_backoff(0)
                    } else {
                        containers::restart_backoff(
                            u32::try_from(container.restart_count).unwrap_or(0),
                        )
                    };
                    container.next_start = Instant::now() + delay;
                    container.restart_count += 1;
                    container.last_exit = Some(exit.clone());
                    let message = format!(
                        "back-off {}s restarting failed container {} (exit code {code})",
                        delay.as_secs(),
                        container.spec.name
                    );
                    self.event(pod, true, "BackOff", message.clone());
                    container.state = RunState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message,
                    };
                } else {
                    container.state = RunState::Terminated(exit);
                }
            }
            return;
        }
        if matches!(container.state, RunState::Terminated(_))
            || Instant::now() < container.next_start
        {
            return;
        }
        let launch = match self.launch_spec(pod, runtime, index).await {
            Ok(launch) => launch,
            Err((reason, message)) => {
                let container = &mut runtime.containers[index];
                let changed = !matches!(&container.state, RunState::Waiting { reason: r, message: m } if *r == reason && *m == message);
                if changed {
                    warn!(pod = %format!("{}/{}", runtime.namespace, runtime.name), container = %container.spec.name, "{reason}: {message}");
                    self.event(pod, true, "Failed", format!("{reason}: {message}"));
                }
                container.state = RunState::Waiting { reason, message };
                container.next_start = Instant::now() + Duration::from_secs(2);
                return;
            }
        };
        let key = runtime.key();
        let container = &mut runtime.containers[index];
        let banner = format!(
            "--- {} starting {} {:?}\n",
            Timestamp::now(),
            launch.program.display(),
            launch.args
        );
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log_file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, banner.as_bytes()));
        match containers::spawn(&launch) {
            Ok(child) => {
                container.pid = child.id();
                container.child = Some(child);
                container.ever_started = true;
                container.state = RunState::Running {
                    started_at: Timestamp::now(),
                };
                info!(pod = %key, container = %container.spec.name, pid = ?container.pid, program = %launch.program.display(), "container started");
                self.event(
                    pod,
                    false,
                    "Started",
                    format!(
                        "Started container {} ({} in {})",
                        container.spec.name,
                        launch.program.display(),
                        launch.netns.as_deref().unwrap_or("host network")
                    ),
                );
                container.ready.store(false, Ordering::Relaxed);
                container.live = Arc::new(AtomicBool::new(true));
                let target = ProbeTarget {
                    ip: IpAddr::V4(pod_ip),
                    netns: launch.netns.clone(),
                };
                let spec = &container.spec;
                match spec
                    .readiness_probe
                    .as_ref()
                    .map(|p| ProbeSpec::from_container(p, spec))
                {
                    None => container.ready.store(true, Ordering::Relaxed),
                    Some(Ok(probe)) => container.probe_tasks.push(tokio::spawn(run_probe(
                        probe,
                        target.clone(),
                        ProbeKind::Readiness,
                        container.ready.clone(),
                    ))),
                    Some(Err(e)) => {
                        warn!(pod = %key, container = %spec.name, "readiness probe ignored, never ready: {e}")
                    }
                }
                match spec
                    .liveness_probe
                    .as_ref()
                    .map(|p| ProbeSpec::from_container(p, spec))
                {
                    None => {}
                    Some(Ok(probe)) => container.probe_tasks.push(tokio::spawn(run_probe(
                        probe,
                        target,
                        ProbeKind::Liveness,
                        container.live.clone(),
                    ))),
                    Some(Err(e)) => {
                        warn!(pod = %key, container = %spec.name, "liveness probe ignored: {e}")
                    }
                }
            }
            Err(e) => {
                container.state = RunState::Waiting {
                    reason: "RunContainerError".into(),
                    message: e.to_string(),
                };
                container.next_start = Instant::now() + Duration::from_secs(2);
            }
        }
    }

    /// Resolves image, command, args and env; Err is a (reason, message) for a
    /// Waiting container state.
    async fn launch_spec(
        &self,
        pod: &Pod,
        runtime: &PodRuntime,
        index: usize,
    ) -> Result<LaunchSpec, (String, String)> {
        let container = &runtime.containers[index].spec;
        let image_ref = container.image.clone().unwrap_or_default();
        let image = ImageRef::parse(&image_ref);
        let resolved = self.config.images.resolve(&image).ok_or_else(|| {
            (
                "ImageNotMapped".to_string(),
                format!("image '{image_ref}' matches no entry of the node agent's image map (hack/cluster/images.yaml)"),
            )
        })?;
        let program = resolved.program.map_err(|tried| {
            let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            (
                "ProgramNotFound".to_string(),
                format!("image '{image_ref}' maps to a program that does not exist (tried {}); build it first", tried.join(", ")),
            )
        })?;
        let mut env: BTreeMap<String, String> = resolved.mapping.env.clone();
        env.insert(
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        env.insert("HOME".into(), runtime.dir.display().to_string());
        env.insert("HOSTNAME".into(), runtime.name.clone());
        env.insert("IMAGE_TAG".into(), image.tag.clone());
        if let Some(kubeconfig) = &runtime.kubeconfig {
            env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
            // For clients that use in-cluster config instead of KUBECONFIG.
            env.insert(
                "KUBERNETES_SERVICE_HOST".into(),
                self.config.gateway().to_string(),
            );
            env.insert(
                "KUBERNETES_SERVICE_PORT".into(),
                self.config.apiserver_port.to_string(),
            );
        }
        let config_error = |message: String| ("CreateContainerConfigError".to_string(), message);
        for source in container.env_from.as_deref().unwrap_or_default() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let data = if let Some(cm) = &source.config_map_ref {
                self.config_map_data(&runtime.namespace, &cm.name).await
            } else if let Some(secret) = &source.secret_ref {
                self.secret_data(&runtime.namespace, &secret.name).await
            } else {
                Ok(BTreeMap::new())
            };
            match data {
                Ok(data) => env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
                Err(e)
                    if source
                        .config_map_ref
                        .as_ref()
                        .and_then(|r| r.optional)
                        .unwrap_or(false)
                        || source
                            .secret_ref
                            .as_ref()
                            .and_then(|r| r.optional)
                            .unwrap_or(false) =>
                {
                    let _ = e;
                }
                Err(e) => return Err(config_error(e)),
            }
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => containers::expand(value, &env),
                (None, Some(from)) => {
                    if let Some(field) = &from.field_ref {
                        field_value(pod, runtime, self.config.gateway(), &field.field_path)
                            .ok_or_else(|| {
                                config_error(format!(
                                    "env {}: unsupported fieldRef '{}'",
                                    var.name, field.field_path
                                ))
                            })?
                    } else if let Some(key) = &from.config_map_key_ref {
                        let data = self
                            .config_map_data(&runtime.namespace, &key.name)
                            .await
                            .map_err(config_error)?;
                        match data.get(&key.key) {
                            Some(v) => v.clone(),
                            None if key.optional == Some(true) => continue,
                            None => {
                                return Err(config_error(format!(
                                    "env {}: key {} not in ConfigMap {}",
                                    var.name, key.key, key.name
                                )))
                            }
                        }
                    } else if let Some(key) = &from.secret_key_ref {
                        let data = self
                            .secret_data(&runtime.namespace, &key.name)
                            .await
                            .map_err(config_error)?;
                        match data.get(&key.key) {
                            Some(v) => v.clone(),
                            None if key.optional == Some(true) => continue,
                            None => {
                                return Err(config_error(format!(
                                    "env {}: key {} not in Secret {}",
                                    var.name, key.key, key.name
                                )))
                            }
                        }
                    } else {
                        return Err(config_error(format!(
                            "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported",
                            var.name
                        )));
                    }
                }
                (None, None) => String::new(),
            };
            env.insert(var.name.clone(), value);
        }
        let command: Vec<String> = container
            .command
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|c| containers::expand(c, &env))
            .collect();
        let args: Option<Vec<String>> = container
            .args
            .as_ref()
            .map(|a| a.iter().map(|x| containers::expand(x, &env)).collect());
        let mapped_args: Vec<String> = resolved
            .mapping
            .args
            .iter()
            .map(|a| containers::expand(a, &env))
            .collect();
        let (program, argv) =
            containers::command_line(&program, &mapped_args, &command, args.as_deref());
        let working_dir = runtime.dir.join(&container.name);
        std::fs::create_dir_all(&working_dir)
            .map_err(|e| config_error(format!("creating {}: {e}", working_dir.display())))?;
        let log_file = self.config.state_dir.join("logs/pods").join(format!(
            "{}_{}_{}.log",
            runtime.namespace, runtime.name, container.name
        ));
        Ok(LaunchSpec {
            program,
            args: argv,
            env: env.into_iter().collect(),
            working_dir,
            log_file,
            netns: runtime.net.as_ref().map(|n| n.netns.clone()),
            service_account_dir: runtime
                .kubeconfig
                .as_ref()
                .map(|_| runtime.dir.join("serviceaccount")),
        })
    }

    async fn config_map_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm = api
            .get(name)
            .await
            .map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
        Ok(cm.data.unwrap_or_default())
    }

    async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get(name)
            .await
            .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
        let mut data: BTreeMap<String, String> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        data.extend(secret.string_data.unwrap_or_default());
        Ok(data)
    }

    async fn update_status(&self, pod: &Pod, runtime: &mut PodRuntime) -> anyhow::Result<()> {
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let all_terminated = !runtime.containers.is_empty()
            && runtime
                .containers
                .iter()
                .all(|c| matches!(c.state, RunState::Terminated(_)));
        let phase =
            if all_terminated && policy != "Always" && pod.metadata.deletion_timestamp.is_none() {
                let ok = runtime
                    .containers
                    .iter()
                    .all(|c| matches!(&c.state, RunState::Terminated(e) if e.code == 0));
                if ok {
                    "Succeeded"
                } else {
                    "Failed"
                }
            } else if runtime.containers.iter().any(|c| c.ever_started) {
                "Running"
            } else {
                "Pending"
            };
        if matches!(phase, "Succeeded" | "Failed") && !runtime.finished {
            runtime.finished = true;
            if let Some(net) = runtime.net.take() {
                network::teardown_pod_netns(&net).await;
            }
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let all_ready = runtime.containers.iter().all(ContainerRuntime::is_ready) && !terminating;
        runtime.set_condition(
            "PodReadyToStartContainers",
            runtime.net.is_some() || self.config.mode == RunMode::Fake,
        );
        runtime.set_condition("Initialized", true);
        runtime.set_condition("ContainersReady", all_ready);
        runtime.set_condition("Ready", all_ready);
        runtime.set_condition("PodScheduled", true);
        let conditions: Vec<PodCondition> = runtime
            .conditions
            .iter()
            .map(|(kind, (value, since))| PodCondition {
                type_: kind.to_string(),
                status: if *value { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(*since)),
                ..Default::default()
            })
            .collect();
        let statuses: Vec<ContainerStatus> = runtime
            .containers
            .iter()
            .map(|c| container_status(c, runtime.ip))
            .collect();
        let ip = runtime.ip.to_string();
        let host_ip = self.config.gateway().to_string();
        let status = PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP { ip: host_ip }]),
            start_time: Some(Time(runtime.start_time)),
            conditions: Some(conditions),
            container_statuses: Some(statuses),
            qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
            ..Default::default()
        };
        let patch = json!({"status": status});
        if runtime.last_patched.as_ref() == Some(&patch) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &runtime.namespace);
        api.patch_status(
            &runtime.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        runtime.last_patched = Some(patch);
        Ok(())
    }
}

fn container_status(c: &ContainerRuntime, pod_ip: Ipv4Addr) -> ContainerStatus {
    let terminated = |e: &Exit| ContainerStateTerminated {
        exit_code: e.code,
        reason: Some(e.reason.clone()),
        started_at: e.started_at.map(Time),
        finished_at: Some(Time(e.finished_at)),
        ..Default::default()
    };
    let state = match &c.state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(e) => ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        },
    };
    let running = matches!(c.state, RunState::Running { .. });
    ContainerStatus {
        name: c.spec.name.clone(),
        image: c.spec.image.clone().unwrap_or_default(),
        image_id: format!("sluice://{}", c.spec.image.clone().unwrap_or_default()),
        container_id: c.pid.map(|pid| format!("sluice://{pod_ip}/{pid}")),
        ready: c.is_ready(),
        started: Some(running),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_exit.as_ref().map(|e| ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Values for `valueFrom.fieldRef`.
fn field_value(pod: &Pod, runtime: &PodRuntime, host_ip: Ipv4Addr, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => runtime.name.clone(),
        "metadata.namespace" => runtime.namespace.clone(),
        "metadata.uid" => runtime.uid.clone(),
        "status.podIP" => runtime.ip.to_string(),
        "status.podIPs" => runtime.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        other => {
            let (map, key) = if let Some(rest) = other.strip_prefix("metadata.labels['") {
                (pod.metadata.labels.as_ref(), rest.strip_suffix("']")?)
            } else if let Some(rest) = other.strip_prefix("metadata.annotations['") {
                (pod.metadata.annotations.as_ref(), rest.strip_suffix("']")?)
            } else {
                return None;
            };
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    };
    Some(value)
}

/// Only one processes-mode agent per machine: a second one would delete the first
/// one's namespaces as leftovers and fight over the bridge.
fn lock_machine() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = "/run/sluice-node-agent.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock(2) on a descriptor we own; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        anyhow::bail!(
            "another sluice-node-agent in processes mode runs on this machine (lock {path} is held)"
        );
    }
    Ok(file)
}

#[derive(Debug, Clone)]
struct ProbeTarget {
    ip: IpAddr,
    netns: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum ProbeKind {
    Readiness,
    Liveness,
}

/// Runs a probe until aborted. Readiness publishes its current verdict in `flag`;
/// liveness clears `flag` once after `failure_threshold` failures and stops.
async fn run_probe(probe: ProbeSpec, target: ProbeTarget, kind: ProbeKind, flag: Arc<AtomicBool>) {
    tokio::time::sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        match probe.check(target.ip, target.netns.as_deref()).await {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= probe.success_threshold {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Err(reason) => {
                failures += 1;
                successes = 0;
                if failures >= probe.failure_threshold {
                    flag.store(false, Ordering::Relaxed);
                    if matches!(kind, ProbeKind::Liveness) {
                        info!(%reason, "liveness probe failed {failures} times");
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}
