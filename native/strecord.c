// SPDX-License-Identifier: Apache-2.0
/*
 * sealtrail native core: the agent's record path for the kernel events it only records.
 *
 * Why by hand: the agent must journal 100k events/s on one core, 10 us per event for
 * everything. In Python, decoding a ring-buffer record into an event object, turning it into
 * fields, encoding canonical JSON, hashing, extending the Merkle tree and writing cost ~20 us on
 * this machine kind (bench/agent_e2e.py; the stage table is in the #5 closing note). Here a
 * network event goes from its raw ring-buffer bytes to its journal line, hash and tree leaf
 * directly, ~1-2 us.
 *
 * The Python path stays the reference: st_encode_run() takes only records it can encode
 * exactly as agent/events/decode.py + agent/daemon.py:event_fields + JournalWriter would (byte
 * for byte, proved by tests/unit/native/test_native_record.py on generated records), and
 * stops at the first one it cannot (another kind, a family other than IPv4/IPv6, a comm that
 * is not printable ASCII, a pid whose exe the caller did not supply, a value outside the
 * record domain). The caller then decodes that record in Python.
 *
 * Batches: st_batch_sample() is a libbpf ring_buffer sample callback that appends every sample
 * as [u32 size][bytes] to a growing buffer, so one poll hands Python one buffer instead of one
 * callback per record.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "../probes/sealtrail.h"
#include "stnative.h"

/* ------------------------------------------------------------------ ring-buffer batches */
int st_batch_sample(void *ctx, void *data, size_t size)
{
	struct st_batch *b = ctx;
	uint64_t need = b->len + 4 + size;
	if (need > b->cap) {
		uint64_t cap = b->cap ? b->cap : 1 << 20;
		while (cap < need)
			cap *= 2;
		uint8_t *grown = realloc(b->buf, cap);
		if (!grown) {
			b->failed++;
			return 0; /* never an error: libbpf would drop the sample anyway */
		}
		b->buf = grown;
		b->cap = cap;
	}
	uint32_t n = (uint32_t)size;
	memcpy(b->buf + b->len, &n, 4);
	memcpy(b->buf + b->len + 4, data, size);
	b->len = need;
	b->count++;
	return 0;
}

void st_batch_free(struct st_batch *b)
{
	free(b->buf);
	memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------ the chain */
/* Write one line the writer encoded (with its newline, one writev), then chain it; the new
 * prev as hex into prev_hex[64]. Returns 0, or -errno with nothing chained (the writer then
 * closes: the line may be partly written, and reopening cuts it). */
int64_t st_chain_write(struct st_chain *c, int fd, const uint8_t *line, uint64_t len,
		       char *prev_hex)
{
	struct iovec iov[2] = {{(void *)line, len}, {(void *)"\n", 1}};
	uint64_t left = len + 1;
	while (left) {
		ssize_t n = writev(fd, iov, 2);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		left -= (uint64_t)n;
		for (int i = 0; i < 2 && n > 0; i++) { /* advance past what was written */
			size_t step = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + step;
			iov[i].iov_len -= step;
			n -= (ssize_t)step;
		}
	}
	st_chain_add(c, line, len);
	st_hex32(prev_hex, c->prev);
	return 0;
}

/* ------------------------------------------------------------------ encoding */
/* Bytes of a network event line besides host, boot id and exe: keys and punctuation ~345,
 * numbers <= 12 x 20, two addresses <= 2 x 48, comm <= 16 x 6, prev 64. */
#define FIXED_LINE_MAX 1024

struct out {
	char *p;
};

#define LIT(o, s)                                                                                  \
	do {                                                                                       \
		memcpy((o)->p, s, sizeof(s) - 1);                                                  \
		(o)->p += sizeof(s) - 1;                                                           \
	} while (0)

static void put(struct out *o, const char *s, size_t n)
{
	memcpy(o->p, s, n);
	o->p += n;
}

static void put_u64(struct out *o, uint64_t v)
{
	char t[24];
	int n = 0;
	do {
		t[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*o->p++ = t[--n];
}

static void put_i64(struct out *o, int64_t v)
{
	if (v < 0) {
		*o->p++ = '-';
		put_u64(o, (uint64_t)0 - (uint64_t)v);
	} else {
		put_u64(o, (uint64_t)v);
	}
}

/* comm as decode.py reads it (bytes up to the first NUL, at most 16) and RFC 8785 encodes it;
 * -1 for anything but ASCII (the UTF-8 "replace" decoding is left to Python). */
static int put_comm(struct out *o, const char *comm)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = strnlen(comm, ST_COMM_LEN);
	*o->p++ = '"';
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)comm[i];
		if (c >= 0x80)
			return -1;
		if (c == '"' || c == '\\') {
			*o->p++ = '\\';
			*o->p++ = (char)c;
		} else if (c < 0x20) {
			*o->p++ = '\\';
			switch (c) {
			case '\b': *o->p++ = 'b'; break;
			case '\f': *o->p++ = 'f'; break;
			case '\n': *o->p++ = 'n'; break;
			case '\r': *o->p++ = 'r'; break;
			case '\t': *o->p++ = 't'; break;
			default:
				LIT(o, "u00");
				*o->p++ = hex[c >> 4];
				*o->p++ = hex[c & 15];
			}
		} else {
			*o->p++ = (char)c;
		}
	}
	*o->p++ = '"';
	return 0;
}

/* The keys every event line ends with, from "tid" (RFC 8785 order) to the closing brace. */
static void put_tail(struct out *o, const struct st_hdr *h, uint64_t ts, uint64_t wall)
{
	LIT(o, ",\"tid\":");
	put_u64(o, h->tid);
	if (h->flags & ST_F_TRUNCATED)
		LIT(o, ",\"truncated\":true");
	else
		LIT(o, ",\"truncated\":false");
	LIT(o, ",\"ts\":\"");
	put_u64(o, ts);
	LIT(o, "\",\"ts_ns\":\"");
	put_u64(o, wall);
	LIT(o, "\",\"type\":\"event\",\"uid\":");
	put_u64(o, h->uid);
	*o->p++ = '}';
}

static const char *protocol_name(unsigned p)
{
#define NAME(number, name)                                                                         \
	case number:                                                                               \
		return #name;
	switch (p) { ST_PROTOCOLS(NAME) }
#undef NAME
	return NULL;
}

/* The record's boottime stamp on the wall clock (decode.py Clock.wall), which Python
 * computes without bounds; -1 where that is not a u64 (the record is handed back). */
static int wall_ns(const struct st_encode *e, uint64_t boot_ns, uint64_t *out)
{
	int64_t off = e->clock_offset;
	if (off >= 0 ? boot_ns > UINT64_MAX - (uint64_t)off : boot_ns < (uint64_t)0 - (uint64_t)off)
		return -1;
	*out = boot_ns + (uint64_t)off;
	return 0;
}

static int find_exe(const struct st_encode *e, uint32_t pid)
{
	for (uint64_t i = 0; i < e->n_exe; i++)
		if (e->exe_pid[i] == pid)
			return (int)i;
	return -1;
}

static int is_net(unsigned op)
{
	return op == ST_OP_CONNECT || op == ST_OP_BIND || op == ST_OP_LISTEN || op == ST_OP_ACCEPT;
}

static const char *net_kind(unsigned op)
{
	switch (op) {
	case ST_OP_CONNECT: return "connect";
	case ST_OP_BIND: return "bind";
	case ST_OP_LISTEN: return "listen";
	default: return "accept";
	}
}

static void put_addr(struct out *o, unsigned family, const uint8_t *raw)
{
	char text[INET6_ADDRSTRLEN];
	inet_ntop(family == 2 ? AF_INET : AF_INET6, raw, text, sizeof(text));
	*o->p++ = '"';
	put(o, text, strlen(text));
	*o->p++ = '"';
}

/* One network event as its canonical journal line (keys in RFC 8785 order); -1: not here. */
static int encode_net(struct out *o, const struct st_encode *e, const struct st_chain *c,
		      const struct st_net *n, int exe, uint64_t ts)
{
	unsigned op = n->hdr.op;
	if (n->family != 2 && n->family != 10)
		return -1;
	if (n->ret > ST_SAFE_INT || n->ret < -ST_SAFE_INT)
		return -1;
	uint64_t wall;
	if (wall_ns(e, n->hdr.ts_ns, &wall))
		return -1;
	*o->p++ = '{';
	LIT(o, "\"auid\":");
	put_u64(o, n->hdr.auid);
	*o->p++ = ',';
	if (op == ST_OP_LISTEN) {
		LIT(o, "\"backlog\":");
		put_u64(o, n->backlog);
		*o->p++ = ',';
	}
	LIT(o, "\"boot_id\":");
	put(o, e->boot, e->boot_len);
	LIT(o, ",\"cgroup_id\":\"");
	put_u64(o, n->hdr.cgroup_id);
	LIT(o, "\",\"comm\":");
	if (put_comm(o, n->hdr.comm))
		return -1;
	LIT(o, ",\"exe\":");
	put(o, e->exe_json + e->exe_off[exe], e->exe_len[exe]);
	if (n->family == 2)
		LIT(o, ",\"family\":\"ipv4\"");
	else
		LIT(o, ",\"family\":\"ipv6\"");
	LIT(o, ",\"gid\":");
	put_u64(o, n->hdr.gid);
	LIT(o, ",\"host\":");
	put(o, e->host, e->host_len);
	LIT(o, ",\"kind\":\"");
	const char *kind = net_kind(op);
	put(o, kind, strlen(kind));
	LIT(o, "\",\"local_addr\":");
	put_addr(o, n->family, n->saddr);
	LIT(o, ",\"local_port\":");
	put_u64(o, n->sport);
	LIT(o, ",\"pid\":");
	put_u64(o, n->hdr.pid);
	LIT(o, ",\"ppid\":");
	put_u64(o, n->hdr.ppid);
	LIT(o, ",\"prev\":\"");
	st_hex32(o->p, c->prev);
	o->p += 64;
	LIT(o, "\",\"protocol\":\"");
	const char *proto = protocol_name(n->protocol);
	if (proto)
		put(o, proto, strlen(proto));
	else
		put_u64(o, n->protocol);
	LIT(o, "\",\"remote_addr\":");
	put_addr(o, n->family, n->daddr);
	LIT(o, ",\"remote_port\":");
	put_u64(o, n->dport);
	LIT(o, ",\"result\":");
	put_i64(o, n->ret);
	LIT(o, ",\"seq\":");
	put_u64(o, c->next_seq);
	LIT(o, ",\"ses\":");
	put_u64(o, n->hdr.ses);
	put_tail(o, &n->hdr, ts, wall);
	return 0;
}

static int is_proc(unsigned op)
{
	return op == ST_OP_FORK || op == ST_OP_EXIT;
}

/* One fork or exit event as its canonical journal line, as decode.py's _proc and
 * recorder.event_fields write it (keys in RFC 8785 order); -1: not here. */
static int encode_proc(struct out *o, const struct st_encode *e, const struct st_chain *c,
		       const struct st_proc *p, int exe, uint64_t ts)
{
	int fork = p->hdr.op == ST_OP_FORK;
	uint64_t wall;
	if (wall_ns(e, p->hdr.ts_ns, &wall))
		return -1;
	*o->p++ = '{';
	LIT(o, "\"auid\":");
	put_u64(o, p->hdr.auid);
	LIT(o, ",\"boot_id\":");
	put(o, e->boot, e->boot_len);
	LIT(o, ",\"cgroup_id\":\"");
	put_u64(o, p->hdr.cgroup_id);
	LIT(o, "\",");
	if (fork) {
		LIT(o, "\"child_pid\":");
		put_u64(o, p->child_pid);
		*o->p++ = ',';
	}
	LIT(o, "\"comm\":");
	if (put_comm(o, p->hdr.comm))
		return -1;
	uint32_t sig = p->exit_code & 0x7f;
	if (!fork) {
		if (p->exit_code & 0x80)
			LIT(o, ",\"core_dumped\":true");
		else
			LIT(o, ",\"core_dumped\":false");
		/* decode.py: max(0, ts_ns - start_ns) if start_ns else 0, boottime ns */
		uint64_t duration = 0;
		if (p->start_ns && p->hdr.ts_ns > p->start_ns)
			duration = p->hdr.ts_ns - p->start_ns;
		LIT(o, ",\"duration_ns\":\"");
		put_u64(o, duration);
		*o->p++ = '"';
	}
	LIT(o, ",\"exe\":");
	put(o, e->exe_json + e->exe_off[exe], e->exe_len[exe]);
	if (!fork) {
		LIT(o, ",\"exit_code\":");
		if (sig)
			LIT(o, "null");
		else
			put_u64(o, (p->exit_code >> 8) & 0xff);
	}
	LIT(o, ",\"gid\":");
	put_u64(o, p->hdr.gid);
	LIT(o, ",\"host\":");
	put(o, e->host, e->host_len);
	if (fork)
		LIT(o, ",\"kind\":\"fork\"");
	else
		LIT(o, ",\"kind\":\"exit\"");
	LIT(o, ",\"pid\":");
	put_u64(o, p->hdr.pid);
	LIT(o, ",\"ppid\":");
	put_u64(o, p->hdr.ppid);
	LIT(o, ",\"prev\":\"");
	st_hex32(o->p, c->prev);
	o->p += 64;
	LIT(o, "\",\"seq\":");
	put_u64(o, c->next_seq);
	LIT(o, ",\"ses\":");
	put_u64(o, p->hdr.ses);
	if (!fork) {
		LIT(o, ",\"signal\":");
		if (sig)
			put_u64(o, sig);
		else
			LIT(o, "null");
	}
	put_tail(o, &p->hdr, ts, wall);
	return 0;
}

/* The run of samples from pos that only ops in ops_mask make up, and its distinct pids (at most
 * max; the run ends before the sample that would add one more). Its forks and exits (at most
 * max_procs) are listed in procs[] by offset: they change which binary a pid runs, which the
 * caller's process table learns after the run, as the Python path observes each event before
 * it decodes the next. So that every exe looked up for the run before it is encoded is the one
 * the Python path would name, the run ends before a sample of a pid that a fork earlier in the
 * run created or an exit earlier in the run ended. Returns the run's end. */
uint64_t st_scan_run(const uint8_t *batch, uint64_t len, uint64_t pos, uint64_t ops_mask,
		     uint32_t *pids, uint32_t max, uint32_t *n_pids, uint64_t *procs,
		     uint32_t max_procs, uint32_t *n_procs)
{
	uint32_t changed[ST_SCAN_MAX_PROCS];
	uint32_t n = 0, m = 0;
	if (max_procs > ST_SCAN_MAX_PROCS)
		max_procs = ST_SCAN_MAX_PROCS;
	while (pos + 4 <= len) {
		uint32_t size;
		memcpy(&size, batch + pos, 4);
		if (size < sizeof(struct st_hdr) || pos + 4 + size > len)
			break;
		struct st_hdr h;
		memcpy(&h, batch + pos + 4, sizeof(h));
		if (h.op >= 64 || !(ops_mask & (1ULL << h.op)))
			break;
		uint32_t k = 0;
		while (k < m && changed[k] != h.pid)
			k++;
		if (k < m)
			break; /* forked or exited earlier in this run: its exe is looked up after it */
		struct st_proc p;
		if (is_proc(h.op)) {
			if (size < sizeof(p) || m == max_procs)
				break;
			memcpy(&p, batch + pos + 4, sizeof(p));
		}
		uint32_t i = 0;
		while (i < n && pids[i] != h.pid)
			i++;
		if (i == n) {
			if (n == max)
				break;
			pids[n++] = h.pid;
		}
		if (is_proc(h.op)) {
			procs[m] = pos;
			changed[m++] = h.op == ST_OP_FORK ? p.child_pid : h.pid;
		}
		pos += 4 + size;
	}
	*n_pids = n;
	*n_procs = m;
	return pos;
}

/* Encode, hash and chain the samples of batch[pos..e->run_end); returns where it stopped. */
uint64_t st_encode_run(struct st_chain *c, struct st_encode *e, const uint8_t *batch,
		       uint64_t pos)
{
	struct out o = {(char *)e->out};
	char *const end = (char *)e->out + e->out_cap;
	e->taken = 0;
	for (;;) {
		if (pos >= e->run_end) {
			e->stop = ST_ENC_END;
			break;
		}
		if (e->taken >= e->limit) {
			e->stop = ST_ENC_LIMIT;
			break;
		}
		e->stop = ST_ENC_SLOW;
		if (c->tree.frontier_len >= ST_MAX_FRONTIER || c->next_seq >= (uint64_t)ST_SAFE_INT)
			break;
		uint32_t size;
		if (e->run_end - pos < 4)
			break;
		memcpy(&size, batch + pos, 4);
		if (size < sizeof(struct st_hdr) || e->run_end - pos - 4 < size)
			break;
		struct st_hdr h;
		memcpy(&h, batch + pos + 4, sizeof(h));
		if (h.op >= 64 || !(e->ops_mask & (1ULL << h.op)))
			break;
		if (is_net(h.op) ? size < sizeof(struct st_net)
				 : !is_proc(h.op) || size < sizeof(struct st_proc))
			break;
		int exe = find_exe(e, h.pid);
		if (exe < 0)
			break;
		uint64_t need = FIXED_LINE_MAX + e->host_len + e->boot_len + e->exe_len[exe] + 1;
		if (need > e->out_cap)
			break; /* never fits: the Python path writes it */
		if ((uint64_t)(end - o.p) < need) {
			e->stop = ST_ENC_FULL;
			break;
		}
		uint64_t ts = e->fixed_ts;
		if (!ts) {
			struct timespec now;
			clock_gettime(CLOCK_REALTIME, &now);
			ts = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
		}
		char *line = o.p;
		int failed;
		if (is_net(h.op)) {
			struct st_net n;
			memcpy(&n, batch + pos + 4, sizeof(n));
			failed = encode_net(&o, e, c, &n, exe, ts);
		} else {
			struct st_proc p;
			memcpy(&p, batch + pos + 4, sizeof(p));
			failed = encode_proc(&o, e, c, &p, exe, ts);
		}
		if (failed) {
			o.p = line;
			break;
		}
		st_chain_add(c, (const uint8_t *)line, (uint64_t)(o.p - line));
		*o.p++ = '\n';
		e->taken++;
		pos += 4 + size;
	}
	e->out_len = (uint64_t)(o.p - (char *)e->out);
	return pos;
}
