// SPDX-License-Identifier: GPL-2.0-only
/*
 * Never loaded: this object exists so that the BTF of every ABI type in sealtrail.h is
 * emitted (types used only through pointer casts in the probes are not), and
 * tests/kernel/test_abi.py can compare agent/kernel/abi.py with it (Tetragon's alignchecker).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "sealtrail.h"

char LICENSE[] SEC("license") = "GPL";

struct st_hdr _st_hdr;
struct st_exec _st_exec;
struct st_proc _st_proc;
struct st_file _st_file;
struct st_net _st_net;
struct st_config _st_config;
struct st_rodata _st_rodata;
struct st_prefix_key _st_prefix_key;
struct st_pending _st_pending;
enum st_op _st_op;
