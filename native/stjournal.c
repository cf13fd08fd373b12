// SPDX-License-Identifier: Apache-2.0
/*
 * sealtrail native journal core: the verifier's fast path.
 *
 * Why by hand: verification must reach 500k records/s, about 2 us per record; on this
 * machine kind orjson alone needs 2.4 us to parse and 2.4 us to re-encode one 456-byte record,
 * so no Python-level composition of libraries can get there. This file is the one hot loop,
 * small and self-contained; SHA-256 comes from OpenSSL's libcrypto (the library hashlib uses).
 *
 * Contract (docs/journal-format.md, "Verifier fast path"): st_verify_run() takes consecutive
 * lines only while each is an *ordinary* record that the reference verifier in
 * agent/journal/verify.py would accept without any finding, and stops at the first line it is
 * not sure about. That line goes through the reference path. So the fast path never reports
 * anything; it can only be stricter than the reference, never laxer. The differential tests in
 * tests/unit/journal/test_native.py check this on mutated journals.
 *
 * Ordinary: a complete line of ASCII canonical JSON (RFC 8785 in the record domain: no
 * whitespace, keys without escapes in strictly increasing order, only the escapes RFC 8785
 * emits, integers within +-(2^53-1), no floats), an object whose seq is the expected one, ts a
 * decimal string, host and boot_id the journal's current ones, type "event" (with kind) or
 * "verdict" (with action in the known set, policy and rule), and prev the hash of the record
 * before. Everything else (seals, rotations, start, recovery, non-ASCII, any anomaly) stops it.
 */
#include <stdint.h>
#include <string.h>
#include <openssl/sha.h>

#include "stnative.h"

#define ST_MAX_DEPTH 32

/* Spans of the top-level fields the checks need. */
struct span {
	const uint8_t *p;
	uint64_t len;
	uint8_t kind; /* 0 absent, 's' string (content without quotes), 'n' number, 'o' other */
};

enum { F_SEQ, F_TS, F_HOST, F_BOOT, F_TYPE, F_PREV, F_KIND, F_ACTION, F_POLICY, F_RULE, F_N };

struct scan {
	const uint8_t *end;
	struct span f[F_N];
};

static int field_index(const uint8_t *k, size_t n)
{
#define IS(s) (n == sizeof(s) - 1 && memcmp(k, s, n) == 0)
	switch (k[0]) {
	case 'a': return IS("action") ? F_ACTION : -1;
	case 'b': return IS("boot_id") ? F_BOOT : -1;
	case 'h': return IS("host") ? F_HOST : -1;
	case 'k': return IS("kind") ? F_KIND : -1;
	case 'p': return IS("prev") ? F_PREV : IS("policy") ? F_POLICY : -1;
	case 'r': return IS("rule") ? F_RULE : -1;
	case 's': return IS("seq") ? F_SEQ : -1;
	case 't': return IS("ts") ? F_TS : IS("type") ? F_TYPE : -1;
	default: return -1;
	}
#undef IS
}

/* Bytes that stand for themselves inside a string: printable ASCII but '"' and '\\'. */
static uint8_t PLAIN[256];

__attribute__((constructor)) static void init_plain(void)
{
	for (int c = 0x20; c < 0x80; c++)
		PLAIN[c] = c != '"' && c != '\\';
}

static int hexlower(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* A string at *pp (the opening quote); on success *pp is past the closing quote. Accepts
 * exactly the encodings RFC 8785 produces for ASCII content. *escaped says a backslash was
 * seen. */
static int scan_string(const uint8_t **pp, const uint8_t *end, int *escaped)
{
	const uint8_t *p = *pp + 1;
	*escaped = 0;
	while (p < end) {
		while (p < end && PLAIN[*p])
			p++;
		if (p >= end)
			break;
		uint8_t c = *p;
		if (c == '"') {
			*pp = p + 1;
			return 0;
		}
		if (c < 0x20 || c >= 0x80)
			return -1;
		if (c != '\\') {
			p++;
			continue;
		}
		*escaped = 1;
		if (end - p < 2)
			return -1;
		switch (p[1]) {
		case '"': case '\\': case 'b': case 'f': case 'n': case 'r': case 't':
			p += 2;
			continue;
		case 'u':
			if (end - p < 6 || p[2] != '0' || p[3] != '0' || (p[4] != '0' && p[4] != '1') ||
			    !hexlower(p[5]))
				return -1;
			if (p[4] == '0' && (p[5] == '8' || p[5] == '9' || p[5] == 'a' || p[5] == 'c' ||
					    p[5] == 'd'))
				return -1; /* \b \t \n \f \r have short forms */
			p += 6;
			continue;
		default:
			return -1;
		}
	}
	return -1;
}

/* An integer in canonical form within the safe range. */
static int scan_int(const uint8_t **pp, const uint8_t *end)
{
	const uint8_t *p = *pp;
	int neg = 0;
	if (p < end && *p == '-') {
		neg = 1;
		p++;
	}
	if (p >= end || *p < '0' || *p > '9')
		return -1;
	if (*p == '0') {
		if (neg)
			return -1; /* -0 */
		p++;
	} else {
		int64_t v = 0;
		int digits = 0;
		while (p < end && *p >= '0' && *p <= '9') {
			if (++digits > 16)
				return -1;
			v = v * 10 + (*p - '0');
			p++;
		}
		if (v > ST_SAFE_INT)
			return -1;
	}
	if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9')))
		return -1; /* a float, or a leading zero */
	*pp = p;
	return 0;
}

static int scan_value(struct scan *s, const uint8_t **pp, int depth, struct span *out);

static int scan_object(struct scan *s, const uint8_t **pp, int depth)
{
	const uint8_t *p = *pp + 1, *end = s->end;
	const uint8_t *last_key = NULL;
	size_t last_len = 0;
	if (p < end && *p == '}') {
		*pp = p + 1;
		return 0;
	}
	for (;;) {
		int escaped;
		if (p >= end || *p != '"')
			return -1;
		const uint8_t *key = p + 1;
		if (scan_string(&p, end, &escaped) || escaped)
			return -1; /* escaped keys: left to the reference path */
		size_t klen = (size_t)(p - 1 - key);
		if (last_key) { /* strictly increasing: ASCII bytes order as UTF-16 units do */
			size_t n = klen < last_len ? klen : last_len, i = 0;
			while (i < n && last_key[i] == key[i])
				i++;
			if (i < n ? last_key[i] > key[i] : last_len >= klen)
				return -1;
		}
		last_key = key;
		last_len = klen;
		if (p >= end || *p != ':')
			return -1;
		p++;
		struct span *slot = NULL;
		if (depth == 1 && klen > 0) {
			int idx = field_index(key, klen);
			if (idx >= 0)
				slot = &s->f[idx];
		}
		if (scan_value(s, &p, depth, slot))
			return -1;
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		if (p < end && *p == '}') {
			*pp = p + 1;
			return 0;
		}
		return -1;
	}
}

static int scan_array(struct scan *s, const uint8_t **pp, int depth)
{
	const uint8_t *p = *pp + 1, *end = s->end;
	if (p < end && *p == ']') {
		*pp = p + 1;
		return 0;
	}
	for (;;) {
		if (scan_value(s, &p, depth, NULL))
			return -1;
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		if (p < end && *p == ']') {
			*pp = p + 1;
			return 0;
		}
		return -1;
	}
}

static int literal(const uint8_t **pp, const uint8_t *end, const char *word, size_t n)
{
	if ((size_t)(end - *pp) < n || memcmp(*pp, word, n) != 0)
		return -1;
	*pp += n;
	return 0;
}

static int scan_value(struct scan *s, const uint8_t **pp, int depth, struct span *out)
{
	const uint8_t *p = *pp, *end = s->end;
	int escaped;
	uint8_t kind = 'o';
	if (p >= end)
		return -1;
	switch (*p) {
	case '{':
		if (depth >= ST_MAX_DEPTH || scan_object(s, &p, depth + 1))
			return -1;
		break;
	case '[':
		if (depth >= ST_MAX_DEPTH || scan_array(s, &p, depth + 1))
			return -1;
		break;
	case '"':
		if (scan_string(&p, end, &escaped))
			return -1;
		kind = 's';
		if (out) {
			out->p = *pp + 1;
			out->len = (uint64_t)(p - *pp - 2);
			out->kind = escaped ? 'o' : 's'; /* compared fields never need escapes */
		}
		*pp = p;
		return 0;
	case 't':
		if (literal(&p, end, "true", 4))
			return -1;
		break;
	case 'f':
		if (literal(&p, end, "false", 5))
			return -1;
		break;
	case 'n':
		if (literal(&p, end, "null", 4))
			return -1;
		break;
	default:
		if (scan_int(&p, end))
			return -1;
		kind = 'n';
		break;
	}
	if (out) {
		out->p = *pp;
		out->len = (uint64_t)(p - *pp);
		out->kind = kind;
	}
	*pp = p;
	return 0;
}

static int span_is(const struct span *sp, const char *s, size_t n)
{
	return sp->kind == 's' && sp->len == n && memcmp(sp->p, s, n) == 0;
}

void st_hex32(char out[64], const uint8_t in[32])
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hex[in[i] >> 4];
		out[2 * i + 1] = hex[in[i] & 15];
	}
}

static int ordinary(const struct st_verify *st, const struct scan *s)
{
	const struct span *f = s->f;
	/* seq: the expected number, written canonically */
	char digits[24];
	int n = 0;
	uint64_t v = st->chain->next_seq;
	do {
		digits[sizeof(digits) - 1 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (f[F_SEQ].kind != 'n' || f[F_SEQ].len != (uint64_t)n ||
	    memcmp(f[F_SEQ].p, digits + sizeof(digits) - n, (size_t)n) != 0)
		return 0;
	/* ts: decimal digits, no leading zero */
	if (f[F_TS].kind != 's' || f[F_TS].len == 0 || (f[F_TS].len > 1 && f[F_TS].p[0] == '0'))
		return 0;
	for (uint64_t i = 0; i < f[F_TS].len; i++)
		if (f[F_TS].p[i] < '0' || f[F_TS].p[i] > '9')
			return 0;
	if (!span_is(&f[F_HOST], st->host, st->host_len) ||
	    !span_is(&f[F_BOOT], st->boot, st->boot_len))
		return 0;
	char prev[64];
	st_hex32(prev, st->chain->prev);
	if (!span_is(&f[F_PREV], prev, 64))
		return 0;
	if (span_is(&f[F_TYPE], "event", 5))
		return f[F_KIND].kind != 0;
	if (span_is(&f[F_TYPE], "verdict", 7)) {
		const struct span *a = &f[F_ACTION];
		if (f[F_POLICY].kind == 0 || f[F_RULE].kind == 0)
			return 0;
#define IS_ACTION(name) span_is(a, #name, sizeof(#name) - 1) ||
		return ST_VERDICT_ACTIONS(IS_ACTION) 0;
#undef IS_ACTION
	}
	return 0;
}

/* SHA-256 through the low-level interface: the one-shot SHA256() of OpenSSL 3 fetches an
 * EVP method under a lock on every call, which cost more than the hashing itself. */
void st_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
	SHA256_CTX ctx;
	SHA256_Init(&ctx);
	SHA256_Update(&ctx, data, len);
	SHA256_Final(out, &ctx);
}

void st_record_hash(const uint8_t *line, size_t len, uint8_t out[32])
{
	SHA256_CTX ctx;
	SHA256_Init(&ctx);
	SHA256_Update(&ctx, ST_RECORD_PREFIX, sizeof(ST_RECORD_PREFIX)); /* with its NUL */
	SHA256_Update(&ctx, line, len);
	SHA256_Final(out, &ctx);
}

void st_tree_append(struct st_tree *t, const uint8_t rh[32])
{
	uint8_t buf[65], node[32];
	buf[0] = 0;
	memcpy(buf + 1, rh, 32);
	st_sha256(buf, 33, node);
	uint64_t size = t->size;
	buf[0] = 1;
	while (size & 1) {
		memcpy(buf + 1, t->frontier[--t->frontier_len], 32);
		memcpy(buf + 33, node, 32);
		st_sha256(buf, 65, node);
		size >>= 1;
	}
	memcpy(t->frontier[t->frontier_len++], node, 32);
	t->size++;
}

void st_tree_root(const struct st_tree *t, uint8_t out[32])
{
	static const uint8_t empty[32] = {
		0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
		0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
	};
	if (!t->frontier_len) {
		memcpy(out, empty, 32);
		return;
	}
	uint8_t buf[65], node[32];
	memcpy(node, t->frontier[t->frontier_len - 1], 32);
	buf[0] = 1;
	for (uint64_t i = t->frontier_len - 1; i-- > 0;) {
		memcpy(buf + 1, t->frontier[i], 32);
		memcpy(buf + 33, node, 32);
		st_sha256(buf, 65, node);
	}
	memcpy(out, node, 32);
}

/* Take ordinary records from buf[pos..len); returns the offset of the first line not taken. */
uint64_t st_verify_run(struct st_verify *st, const uint8_t *buf, uint64_t len, uint64_t pos)
{
	st->taken = 0;
	for (;;) {
		if (pos >= len) {
			st->stop = ST_STOP_END;
			return pos;
		}
		if (st->taken >= st->limit) {
			st->stop = ST_STOP_LIMIT;
			return pos;
		}
		if (st->chain->tree.size >= (1ULL << 62) ||
		    st->chain->tree.frontier_len >= ST_MAX_FRONTIER) {
			st->stop = ST_STOP_RECORD;
			return pos;
		}
		const uint8_t *line = buf + pos;
		/* One pass: the object ends where its closing brace is, and a newline must follow.
		 * (No string may hold a raw newline, so the scan cannot run past its line.) */
		struct scan s;
		memset(s.f, 0, sizeof(s.f));
		s.end = buf + len;
		const uint8_t *p = line;
		if (p >= s.end || *p != '{' || scan_value(&s, &p, 0, NULL) || p >= s.end ||
		    *p != '\n') {
			st->stop = memchr(line, '\n', len - pos) ? ST_STOP_SYNTAX : ST_STOP_TORN;
			return pos;
		}
		const uint8_t *nl = p;
		if (!ordinary(st, &s)) {
			st->stop = ST_STOP_RECORD;
			return pos;
		}
		st_chain_add(st->chain, line, (uint64_t)(nl - line));
		st->taken++;
		st->last_offset = pos;
		pos = (uint64_t)(nl - buf) + 1;
	}
}

/* ---------------------------------------------------------------- the writer's chain */
void st_chain_add(struct st_chain *c, const uint8_t *line, uint64_t len)
{
	uint8_t rh[32];
	st_record_hash(line, len, rh);
	st_tree_append(&c->tree, rh);
	memcpy(c->prev, rh, 32);
	c->next_seq++;
}

/* The reopen scan: chain every complete line of buf (the writer trusts its own sealed
 * segments); returns the offset after the last newline. */
uint64_t st_chain_lines(struct st_chain *c, const uint8_t *buf, uint64_t len)
{
	uint64_t pos = 0;
	while (pos < len) {
		const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
		if (!nl || c->tree.frontier_len >= ST_MAX_FRONTIER)
			break;
		st_chain_add(c, buf + pos, (uint64_t)(nl - buf - pos));
		pos = (uint64_t)(nl - buf) + 1;
	}
	return pos;
}
