/* The fanotify permission reader's fast path (agent/native/fanfilter.py, agent/enforce/fanotify.py).
 *
 * fanotify marks whole directories (the parent of a prefix rule such as /etc/sudoers*, the
 * directories of a tree rule), so the kernel asks about every file opened there, most of which
 * no rule names (every exec opens /etc/ld.so.cache). Answering those from Python costs a
 * wake-up and the GIL per open while the caller waits. This reader answers ALLOW here, without
 * the GIL, only when the filter proves the Python decision would be a plain "no rule names
 * this file" allow (Enforcer._decide_permission's first test); everything else is handed to
 * Python unchanged, as the raw fanotify metadata. The proof, all of it conservative:
 *   - the event is FAN_OPEN_PERM and/or FAN_OPEN_EXEC_PERM on a regular file with one name
 *     (st_nlink 1: a hard link made since the plan may be a name an exact rule gives);
 *   - (st_dev, st_ino) is not a file an exact rule names (identity, any name it has);
 *   - its name here (readlink of /proc/self/fd/N, not " (deleted)") lies directly in a
 *     directory the plan marked, on the same device, whose name still leads to that very
 *     directory (stat: same device and inode, so nothing was mounted over it since) and which
 *     has no other name in the agent's mount namespace (the builder leaves such out), and
 *     the file was reached through that directory's mount (statx mount ids: a file
 *     bind-mounted onto a name in the directory is another file, with names of its own);
 *   - the caller is in the agent's mount namespace (/proc/TID/ns/mnt), so that name is the
 *     one it used and no bind mount of another namespace is involved;
 *   - no open or exec entry of the compiled paths table could match the name: an exact entry
 *     equal to it, or a prefix entry it starts with (a superset of the kernel's LPM lookup,
 *     which matches the same entries on a path cut at ST_LPM_PATH_DATA bytes).
 * Or, whatever the file and its names: the caller's real uid and primary gid (/proc/TID/status,
 * as agent/enforce/process.py reads them) admit no rule of the operations the event may be
 * judged as (exec; an open: open and exec, the loader's case). The screens are the compiled
 * tables' own uid and gid masks (Evaluator.id_screen): a rule can match only a subject in
 * (uid.self | UID_ANY) & (gid.self | GID_ANY), so where that is empty for every such operation
 * the evaluator's verdict is a plain allow (tests/unit/policy/test_id_screen.py proves it on
 * generated policies).
 * With no filter installed (NULL: while a policy is being switched) every event goes to Python.
 * Hand-written because no library reads fanotify; the format is the kernel's uapi.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fanotify.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

struct st_fan_dir {
	char *path;
	size_t len;
	uint64_t dev, ino;
};

struct st_fan_pattern {
	char *text;
	size_t len;
	int exact;
};

struct st_fan_id {
	uint64_t dev, ino;
};

/* A rule mask of the compiled tables (st_mask: bit i of rule index i is bit i%64 of w[i/64]). */
#define ST_FAN_MASK_WORDS 16

struct st_fan_idmask {
	uint32_t id;
	uint64_t w[ST_FAN_MASK_WORDS];
};

/* One operation's uid and gid masks; unset: the ids exclude nothing. */
struct st_fan_screen {
	int set;
	int admits_all; /* sealed: a rule takes any uid and any gid, so no caller is screened out */
	uint64_t uid_any[ST_FAN_MASK_WORDS], gid_any[ST_FAN_MASK_WORDS];
	struct st_fan_idmask *ids[2]; /* 0: uid, 1: gid; sorted by id when sealed */
	size_t n[2], cap[2];
};

enum { ST_FAN_SCREEN_OPEN, ST_FAN_SCREEN_EXEC, ST_FAN_SCREENS };

struct st_fan_filter {
	uint64_t mnt_dev, mnt_ino; /* the agent's /proc/self/ns/mnt */
	struct st_fan_dir *dirs;
	size_t n_dirs, cap_dirs;
	struct st_fan_pattern *patterns;
	size_t n_patterns, cap_patterns;
	struct st_fan_id *ids;
	size_t n_ids, cap_ids;
	struct st_fan_screen screens[ST_FAN_SCREENS];
	int sealed;
};

struct st_fan_reader {
	pthread_mutex_t lock;
	struct st_fan_filter *filter;
	uint64_t allowed; /* answered here */
	char buf[64 * 1024];
};

static int grow(void **items, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return 0;
	size_t want = *cap ? *cap * 2 : 16;
	void *p = realloc(*items, want * size);
	if (!p)
		return -ENOMEM;
	*items = p;
	*cap = want;
	return 0;
}

struct st_fan_filter *st_fan_filter_new(uint64_t mnt_dev, uint64_t mnt_ino)
{
	struct st_fan_filter *f = calloc(1, sizeof(*f));
	if (f) {
		f->mnt_dev = mnt_dev;
		f->mnt_ino = mnt_ino;
	}
	return f;
}

void st_fan_filter_free(struct st_fan_filter *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n_dirs; i++)
		free(f->dirs[i].path);
	for (size_t i = 0; i < f->n_patterns; i++)
		free(f->patterns[i].text);
	free(f->dirs);
	free(f->patterns);
	free(f->ids);
	for (int i = 0; i < ST_FAN_SCREENS; i++) {
		free(f->screens[i].ids[0]);
		free(f->screens[i].ids[1]);
	}
	free(f);
}

int st_fan_filter_dir(struct st_fan_filter *f, const char *path, uint64_t dev, uint64_t ino)
{
	if (f->sealed || path[0] != '/')
		return -EINVAL;
	if (grow((void **)&f->dirs, &f->cap_dirs, f->n_dirs, sizeof(*f->dirs)))
		return -ENOMEM;
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	char *copy = strndup(path, len);
	if (!copy)
		return -ENOMEM;
	f->dirs[f->n_dirs++] = (struct st_fan_dir){copy, len, dev, ino};
	return 0;
}

int st_fan_filter_pattern(struct st_fan_filter *f, const char *text, size_t len, int exact)
{
	if (f->sealed)
		return -EINVAL;
	if (grow((void **)&f->patterns, &f->cap_patterns, f->n_patterns, sizeof(*f->patterns)))
		return -ENOMEM;
	char *copy = malloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, text, len);
	copy[len] = 0;
	f->patterns[f->n_patterns++] = (struct st_fan_pattern){copy, len, exact};
	return 0;
}

int st_fan_filter_identity(struct st_fan_filter *f, uint64_t dev, uint64_t ino)
{
	if (f->sealed)
		return -EINVAL;
	if (grow((void **)&f->ids, &f->cap_ids, f->n_ids, sizeof(*f->ids)))
		return -ENOMEM;
	f->ids[f->n_ids++] = (struct st_fan_id){dev, ino};
	return 0;
}

/* Operation ``which``'s screen: the UID_ANY and GID_ANY slots (ST_FAN_MASK_WORDS each). */
int st_fan_filter_screen(struct st_fan_filter *f, int which, const uint64_t *uid_any,
			 const uint64_t *gid_any)
{
	if (f->sealed || which < 0 || which >= ST_FAN_SCREENS)
		return -EINVAL;
	struct st_fan_screen *s = &f->screens[which];
	memcpy(s->uid_any, uid_any, sizeof(s->uid_any));
	memcpy(s->gid_any, gid_any, sizeof(s->gid_any));
	s->set = 1;
	return 0;
}

/* One entry of that screen's uid (kind 0) or gid (kind 1) table: the rules ``id`` satisfies. */
int st_fan_filter_screen_id(struct st_fan_filter *f, int which, int kind, uint32_t id,
			    const uint64_t *mask)
{
	if (f->sealed || which < 0 || which >= ST_FAN_SCREENS || kind < 0 || kind > 1 ||
	    !f->screens[which].set)
		return -EINVAL;
	struct st_fan_screen *s = &f->screens[which];
	if (grow((void **)&s->ids[kind], &s->cap[kind], s->n[kind], sizeof(*s->ids[kind])))
		return -ENOMEM;
	struct st_fan_idmask *e = &s->ids[kind][s->n[kind]++];
	e->id = id;
	memcpy(e->w, mask, sizeof(e->w));
	return 0;
}

static int cmp_idmask(const void *a, const void *b)
{
	const struct st_fan_idmask *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

static int cmp_dir(const void *a, const void *b)
{
	const struct st_fan_dir *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->path, y->path, n);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int cmp_id(const void *a, const void *b)
{
	const struct st_fan_id *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return (x->ino > y->ino) - (x->ino < y->ino);
}

void st_fan_filter_seal(struct st_fan_filter *f)
{
	qsort(f->dirs, f->n_dirs, sizeof(*f->dirs), cmp_dir);
	qsort(f->ids, f->n_ids, sizeof(*f->ids), cmp_id);
	for (int i = 0; i < ST_FAN_SCREENS; i++) {
		struct st_fan_screen *s = &f->screens[i];
		for (int k = 0; k < 2; k++)
			if (s->n[k])
				qsort(s->ids[k], s->n[k], sizeof(*s->ids[k]), cmp_idmask);
		for (int w = 0; w < ST_FAN_MASK_WORDS; w++)
			s->admits_all |= (s->uid_any[w] & s->gid_any[w]) != 0;
	}
	f->sealed = 1;
}

/* The first number of a /proc/TID/status field ("\nUid:\t1000\t..."); -1 if absent. The Name
 * line, the only one a process sets, has its newlines escaped by the kernel. */
static int status_id(const char *text, const char *field, uint32_t *out)
{
	const char *at = strstr(text, field);
	if (!at)
		return -1;
	at += strlen(field);
	while (*at == '\t' || *at == ' ')
		at++;
	char *end;
	errno = 0;
	unsigned long v = strtoul(at, &end, 10);
	if (end == at || errno || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static const uint64_t *idmask(const struct st_fan_screen *s, int kind, uint32_t id)
{
	struct st_fan_idmask key = {.id = id};
	const struct st_fan_idmask *e =
		s->n[kind] ? bsearch(&key, s->ids[kind], s->n[kind], sizeof(key), cmp_idmask) : NULL;
	return e ? e->w : NULL;
}

/* 1: the screen proves no rule of its operation admits this uid and gid. */
static int screened_out(const struct st_fan_screen *s, uint32_t uid, uint32_t gid)
{
	if (!s->set)
		return 0;
	const uint64_t *u = idmask(s, 0, uid), *g = idmask(s, 1, gid);
	for (int w = 0; w < ST_FAN_MASK_WORDS; w++)
		if (((u ? u[w] : 0) | s->uid_any[w]) & ((g ? g[w] : 0) | s->gid_any[w]))
			return 0;
	return 1;
}

/* 1: the caller's ids admit no rule of an operation the event may be judged as. */
static int ids_admit_no_rule(const struct st_fan_filter *f, int tid, uint64_t mask)
{
	const struct st_fan_screen *open_ = &f->screens[ST_FAN_SCREEN_OPEN];
	const struct st_fan_screen *exec_ = &f->screens[ST_FAN_SCREEN_EXEC];
	/* nothing to prove (no screen, or one no caller passes): no need to read /proc */
	if (!exec_->set || exec_->admits_all ||
	    ((mask & FAN_OPEN_PERM) && (!open_->set || open_->admits_all)))
		return 0;
	char name[64], text[4096];
	snprintf(name, sizeof(name), "/proc/%d/status", tid);
	int fd = open(name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	size_t got = 0;
	for (;;) { /* Uid and Gid come within the first 4 KiB; read until full or the end */
		ssize_t n = read(fd, text + got, sizeof(text) - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == sizeof(text) - 1)
			break;
	}
	close(fd);
	text[got] = 0;
	uint32_t uid, gid;
	if (status_id(text, "\nUid:", &uid) || status_id(text, "\nGid:", &gid))
		return 0;
	if (!screened_out(exec_, uid, gid))
		return 0;
	return !(mask & FAN_OPEN_PERM) || screened_out(open_, uid, gid);
}

static int unnamed_file_allows(const struct st_fan_filter *f, int event_fd, int tid);

/* 1: the Python decision would be a plain allow (module comment); 0: ask Python. */
int st_fan_filter_allows(const struct st_fan_filter *f, int event_fd, int tid, uint64_t mask)
{
	if (!f || !f->sealed)
		return 0;
	if (!mask || (mask & ~(uint64_t)(FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM)))
		return 0;
	return unnamed_file_allows(f, event_fd, tid) || ids_admit_no_rule(f, tid, mask);
}

/* A file directly in a marked directory that no open or exec entry names (module comment). */
static int unnamed_file_allows(const struct st_fan_filter *f, int event_fd, int tid)
{
	struct statx st;
	if (statx(event_fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID, &st) ||
	    !(st.stx_mask & STATX_MNT_ID) || !S_ISREG(st.stx_mode))
		return 0;
	/* another name may be a rule's (a hard link the directory watcher has not seen yet) */
	if (st.stx_nlink != 1)
		return 0;
	uint64_t dev = makedev(st.stx_dev_major, st.stx_dev_minor);
	struct st_fan_id id = {dev, st.stx_ino};
	if (f->n_ids && bsearch(&id, f->ids, f->n_ids, sizeof(*f->ids), cmp_id))
		return 0;
	char link[64], path[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", event_fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 1 || n >= (ssize_t)sizeof(path) - 1 || path[0] != '/')
		return 0;
	path[n] = 0;
	if (n >= 10 && !memcmp(path + n - 10, " (deleted)", 10))
		return 0;
	char *slash = memrchr(path, '/', (size_t)n);
	size_t dlen = slash == path ? 1 : (size_t)(slash - path);
	struct st_fan_dir key = {path, dlen, 0, 0};
	const struct st_fan_dir *dir = bsearch(&key, f->dirs, f->n_dirs, sizeof(*f->dirs), cmp_dir);
	if (!dir || dir->dev != dev)
		return 0;
	/* that name's directory is still the marked one (not a mount over it since), and the
	 * file was reached through the directory's own mount: not a file bind-mounted onto a
	 * name in it, whose own name may be a rule's */
	struct statx parent;
	char saved = path[dlen];
	path[dlen] = 0;
	int gone = statx(AT_FDCWD, path, 0, STATX_INO | STATX_MNT_ID, &parent);
	path[dlen] = saved;
	if (gone || !(parent.stx_mask & STATX_MNT_ID) || parent.stx_mnt_id != st.stx_mnt_id ||
	    makedev(parent.stx_dev_major, parent.stx_dev_minor) != dir->dev ||
	    parent.stx_ino != dir->ino)
		return 0;
	struct stat ns;
	snprintf(link, sizeof(link), "/proc/%d/ns/mnt", tid);
	if (stat(link, &ns) || (uint64_t)ns.st_ino != f->mnt_ino || (uint64_t)ns.st_dev != f->mnt_dev)
		return 0;
	for (size_t i = 0; i < f->n_patterns; i++) {
		const struct st_fan_pattern *p = &f->patterns[i];
		if (p->exact ? ((size_t)n == p->len && !memcmp(path, p->text, p->len))
			     : ((size_t)n >= p->len && !memcmp(path, p->text, p->len)))
			return 0;
	}
	return 1;
}

struct st_fan_reader *st_fan_reader_new(void)
{
	struct st_fan_reader *r = calloc(1, sizeof(*r));
	if (r && pthread_mutex_init(&r->lock, NULL)) {
		free(r);
		return NULL;
	}
	return r;
}

/* Install ``f`` (NULL: ask Python about everything); returns the filter it replaces, which no
 * event is being judged with any more once this returns (the caller frees it). */
struct st_fan_filter *st_fan_reader_swap(struct st_fan_reader *r, struct st_fan_filter *f)
{
	pthread_mutex_lock(&r->lock);
	struct st_fan_filter *old = r->filter;
	r->filter = f;
	pthread_mutex_unlock(&r->lock);
	return old;
}

uint64_t st_fan_reader_allowed(struct st_fan_reader *r)
{
	pthread_mutex_lock(&r->lock);
	uint64_t n = r->allowed;
	pthread_mutex_unlock(&r->lock);
	return n;
}

void st_fan_reader_free(struct st_fan_reader *r)
{
	if (!r)
		return;
	st_fan_filter_free(r->filter);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* Wait for events on fan_fd (or a byte on wake_fd), answer what the filter allows, and copy
 * the metadata of every other event into out (at most cap bytes: cap >= sizeof(r->buf) holds
 * a whole read). Returns the bytes copied, 0 if woken with nothing to hand over, -errno on a
 * read error. Loops while everything read was answered here. */
ssize_t st_fan_read(struct st_fan_reader *r, int fan_fd, int wake_fd, char *out, size_t cap)
{
	struct pollfd fds[2] = {{.fd = fan_fd, .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};
	int self = (int)syscall(SYS_gettid);
	if (cap < sizeof(r->buf))
		return -EINVAL;
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (fds[1].revents)
			return 0;
		ssize_t got = read(fan_fd, r->buf, sizeof(r->buf));
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		size_t used = 0;
		pthread_mutex_lock(&r->lock);
		for (ssize_t off = 0; off + (ssize_t)sizeof(struct fanotify_event_metadata) <= got;) {
			struct fanotify_event_metadata *m = (void *)(r->buf + off);
			if (m->event_len < sizeof(*m) || off + (ssize_t)m->event_len > got)
				break;
			int mine = m->fd >= 0 && m->vers == FANOTIFY_METADATA_VERSION &&
				   (m->pid == self ||
				    st_fan_filter_allows(r->filter, m->fd, m->pid, m->mask));
			struct fanotify_response resp = {.fd = m->fd, .response = FAN_ALLOW};
			if (mine && write(fan_fd, &resp, sizeof(resp)) == (ssize_t)sizeof(resp)) {
				close(m->fd);
				r->allowed++;
			} else {
				memcpy(out + used, m, m->event_len);
				used += m->event_len;
			}
			off += m->event_len;
		}
		pthread_mutex_unlock(&r->lock);
		if (used)
			return (ssize_t)used;
	}
}
