# shellcheck shell=bash
# Sourced by scripts/test and bench/run: give this shell a ROS_DOMAIN_ID nobody else uses.
# Network namespaces do not separate /dev/shm, where Fast DDS also discovers, so parallel runs
# must not share a domain. A domain is free when no run holds its lock file and no Fast DDS port
# file in /dev/shm belongs to it (ports 7400 + 250 * domain ...). The lock stays held on fd 9
# for as long as this shell and its children live. A ROS_DOMAIN_ID already set is kept.
take_ros_domain() {
  [ -z "${ROS_DOMAIN_ID:-}" ] || return 0
  local used candidate
  used=$(for path in /dev/shm/fastdds_port*; do echo "${path##*/}"; done |
         sed -n 's/^fastdds_port\([0-9]*\).*/\1/p' |
         awk '$1 >= 7400 { print int(($1 - 7400) / 250) }' | sort -un)
  for _ in $(seq 1 200); do
    candidate=$(( RANDOM % 100 + 1 ))
    grep -qx "$candidate" <<<"$used" && continue
    exec 9>"/tmp/video_bridge-ros-domain-$candidate.lock"
    if flock -n 9; then export ROS_DOMAIN_ID=$candidate; return 0; fi
    exec 9>&-
  done
  echo "no free ROS_DOMAIN_ID" >&2
  return 1
}
