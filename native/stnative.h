/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sealtrail native core: every struct and constant shared with Python, defined once.
 *
 * Mirrored once by ctypes in agent/native/layout.py (keep in sync). The library exports this
 * header's layout and values as a table (st_abi(), stabi.c): agent/native checks the structs'
 * sizes and field offsets and the constants' values against it when it loads the library (a
 * stale build is not used), and tests/unit/native/test_native_abi.py pins them. The kernel
 * ABI (ring-buffer records, ops, flags) is probes/sealtrail.h, checked against BTF.
 */
#ifndef STNATIVE_H
#define STNATIVE_H

#include <stdint.h>
#include <stddef.h>

/* ------------------------------------------------------------------ the record domain */
/* Record hash = SHA-256(ST_RECORD_PREFIX with its terminating NUL || line)
 * (agent/journal/record.py RECORD_PREFIX, docs/journal-format.md section 5). */
#define ST_RECORD_PREFIX "sealtrail/record/v1"
/* The largest integer a record holds: 2^53 - 1 (agent/journal/canonical.py MAX_SAFE_INT). */
#define ST_SAFE_INT 9007199254740991LL
/* The actions of a verdict record (agent/journal/record.py VERDICT_ACTIONS). */
#define ST_VERDICT_ACTIONS(X) X(allow) X(audit) X(deny) X(kill) X(would_deny) X(would_kill)
/* IP protocol numbers and the names events carry (agent/events/decode.py PROTOCOLS). */
#define ST_PROTOCOLS(X)                                                                            \
	X(1, icmp) X(6, tcp) X(17, udp) X(58, icmpv6) X(132, sctp) X(136, udplite) X(262, mptcp)

/* ------------------------------------------------------------------ the chain */
#define ST_MAX_FRONTIER 64

/* An append-only RFC 9162 Merkle tree as its frontier (roots of perfect subtrees). */
struct st_tree {
	uint64_t size;
	uint64_t frontier_len;
	uint8_t frontier[ST_MAX_FRONTIER][32];
};

/* A journal's hash chain: the seq the next record carries, hash of the last record, tree. */
struct st_chain {
	uint64_t next_seq;
	uint8_t prev[32];
	struct st_tree tree;
};

/* ------------------------------------------------------------------ verify fast path */
/* Why a verify run stopped (struct st_verify.stop). */
enum st_stop {
	ST_STOP_END = 0,    /* every complete line taken */
	ST_STOP_LIMIT = 1,  /* limit reached */
	ST_STOP_TORN = 2,   /* a line without its newline */
	ST_STOP_SYNTAX = 3, /* not canonical JSON the fast path accepts */
	ST_STOP_RECORD = 4, /* canonical, but not an ordinary record in sequence */
};

/* The verifier's fast path (stjournal.c): runs of ordinary records that continue ``chain``. */
struct st_verify {
	struct st_chain *chain; /* in/out: the seq, prev and tree the records must continue */
	uint64_t taken;         /* out: records taken by the last run */
	uint64_t limit;         /* in: take at most this many records */
	uint64_t last_offset;   /* out: offset in buf of the last record taken */
	uint64_t stop;          /* out: why the run stopped (enum st_stop), for tests */
	const char *host;       /* in: canonical JSON content of the journal's host */
	uint64_t host_len;
	const char *boot; /* in: canonical JSON content of the current boot id */
	uint64_t boot_len;
};

/* ------------------------------------------------------------------ ring-buffer batches */
/* Samples appended by st_batch_sample() as [u32 size][bytes]. */
struct st_batch {
	uint8_t *buf;
	uint64_t len;
	uint64_t cap;
	uint64_t count;
	uint64_t failed; /* samples that could not be stored (out of memory): counted as lost */
};

/* ------------------------------------------------------------------ event encoding */
/* Why an encode run stopped (struct st_encode.stop). */
enum st_enc {
	ST_ENC_END = 0,   /* reached run_end */
	ST_ENC_LIMIT = 1, /* limit reached */
	ST_ENC_FULL = 2,  /* out is full */
	ST_ENC_SLOW = 3,  /* the record at the returned offset needs the Python path */
};

/* The record path (strecord.c): network events from ring-buffer bytes to journal lines. */
struct st_encode {
	/* in */
	const char *host; /* canonical JSON of the host name, quotes included */
	uint64_t host_len;
	const char *boot; /* canonical JSON of the boot id */
	uint64_t boot_len;
	int64_t clock_offset; /* CLOCK_BOOTTIME -> wall-clock ns (agent/events/decode.py Clock) */
	uint64_t fixed_ts;    /* the record ts to use, or 0 for CLOCK_REALTIME per record */
	uint64_t ops_mask;    /* bit (1 << op) for every op the run may take */
	uint64_t limit;       /* take at most this many records */
	uint64_t run_end;     /* stop at this batch offset */
	uint64_t n_exe;       /* the exe of every pid in the run: pid, JSON (or null) */
	const uint32_t *exe_pid;
	const uint32_t *exe_off;
	const uint32_t *exe_len;
	const char *exe_json;
	uint8_t *out; /* lines, each with its newline */
	uint64_t out_cap;
	/* out */
	uint64_t out_len;
	uint64_t taken;
	uint64_t stop; /* enum st_enc */
};

/* Every field is 8 bytes wide, so no padding: the Python mirror is plain. */
_Static_assert(sizeof(struct st_tree) == 16 + 32 * ST_MAX_FRONTIER, "st_tree has padding");
_Static_assert(sizeof(struct st_chain) == 40 + sizeof(struct st_tree), "st_chain has padding");
_Static_assert(sizeof(struct st_verify) == 9 * 8, "st_verify has padding");
_Static_assert(sizeof(struct st_batch) == 5 * 8, "st_batch has padding");
_Static_assert(sizeof(struct st_encode) == 19 * 8, "st_encode has padding");
_Static_assert(sizeof(ST_RECORD_PREFIX) == 20, "the record prefix is hashed with its NUL");

/* ------------------------------------------------------------------ the layout table */
/* One entry of st_abi(): a struct (name "st_x", size), a field ("st_x.f", offset, size), an
 * integer constant (value) or a text constant (text, size = its length). Several entries may
 * share a name (one per verdict action, one per protocol). */
struct st_abi_entry {
	const char *name; /* NULL ends the table */
	int64_t value;    /* a constant's value, a field's offset */
	uint64_t size;    /* a struct's or field's size, a text's length */
	const char *text; /* a text constant, else NULL */
};
const struct st_abi_entry *st_abi(void);

/* ------------------------------------------------------------------ functions */
uint64_t st_verify_run(struct st_verify *st, const uint8_t *buf, uint64_t len, uint64_t pos);
void st_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
/* Record hash: SHA-256(ST_RECORD_PREFIX || NUL || line). */
void st_record_hash(const uint8_t *line, size_t len, uint8_t out[32]);
void st_tree_append(struct st_tree *t, const uint8_t record_hash[32]);
void st_tree_root(const struct st_tree *t, uint8_t out[32]);
/* Chain one record line (no newline): hash, tree leaf, prev, seq. */
void st_chain_add(struct st_chain *c, const uint8_t *line, uint64_t len);
/* Chain every complete line of buf; returns the offset after the last newline. */
uint64_t st_chain_lines(struct st_chain *c, const uint8_t *buf, uint64_t len);
/* Write line and its newline to fd, then chain it; 0 or -errno (nothing chained). */
int64_t st_chain_write(struct st_chain *c, int fd, const uint8_t *line, uint64_t len,
		       char *prev_hex);
/* A 32-byte hash as 64 lower-case hex digits (no NUL). */
void st_hex32(char out[64], const uint8_t in[32]);
/* A libbpf ring_buffer sample callback: appends the sample to the struct st_batch at ctx. */
int st_batch_sample(void *ctx, void *data, size_t size);
void st_batch_free(struct st_batch *b);
/* st_scan_run lists at most this many forks and exits of a run. */
#define ST_SCAN_MAX_PROCS 256
uint64_t st_scan_run(const uint8_t *batch, uint64_t len, uint64_t pos, uint64_t ops_mask,
		     uint32_t *pids, uint32_t max, uint32_t *n_pids, uint64_t *procs,
		     uint32_t max_procs, uint32_t *n_procs);
uint64_t st_encode_run(struct st_chain *c, struct st_encode *e, const uint8_t *batch,
		       uint64_t pos);

#endif
