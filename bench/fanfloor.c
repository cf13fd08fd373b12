// SPDX-License-Identifier: Apache-2.0
/*
 * The floor of one fanotify permission round trip on this machine, without the agent: what
 * any fanotify-based enforcer pays when the kernel asks it about an open or an exec, however
 * fast its decision. Built and run by bench/fanotify_floor.py (cc -O2 -pthread).
 *
 *   fanfloor [-n ITERS] [-p none|same|other|percpu] [-c] MODE DIR
 *
 * MODE
 *   open-none    open(DIR/f, O_RDONLY) + close, no mark
 *   open-marked  the same with DIR marked FAN_OPEN_PERM | FAN_EVENT_ON_CHILD: every open waits
 *                for this process's answering thread (poll, read, write FAN_ALLOW, close)
 *   exec-none    fork + execve(DIR/true) + waitpid (DIR/true: a copy of /bin/true), no mark
 *   exec-marked  the same with DIR marked FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD: one
 *                permission event per exec (the binary's exec open), answered ALLOW
 *   exec-both    the same with FAN_OPEN_PERM too, as the agent marks a binary an exact exec
 *                rule judges (the loader's open of it is judged as an exec): the kernel asks
 *                twice per exec, FAN_OPEN_EXEC_PERM and then FAN_OPEN_PERM for the same open
 *
 * -p: where the answering thread runs: unpinned (none, the default), on the CPU of the timed
 * loop (same, pinned too), on another CPU (other), or one answering thread pinned to each CPU,
 * all polling the one group (percpu: the kernel wakes them all; the one on the waiting task's
 * CPU runs at once, without an inter-processor wake-up). The timed loop is pinned to CPU 0
 * when -p is same or other.
 *
 * -c: before each answer, make the system calls the agent's native filter makes to prove a
 * plain allow (native/stfanotify.c unnamed_file_allows: statx of the event fd, readlink of
 * /proc/self/fd/N, statx of the parent directory, stat of /proc/TID/ns/mnt), so the run
 * separates the cost of that proof from the cost of the wake-ups.
 *
 * Output: "ns_per_iter=<x> events=<n>" after an untimed warm-up of ITERS/10 iterations.
 * Only DIR is marked, and the group is closed at exit (nothing outlives the run).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fan = -1;
static unsigned long answered;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}

static long answer_cpu = -1;
static int checks;

/* The system calls of the native filter's proof (-c); the answer does not depend on them. */
static void check(const struct fanotify_event_metadata *m)
{
	struct statx st;
	char link[64], path[4096];
	if (statx(m->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID, &st))
		die("statx");
	snprintf(link, sizeof(link), "/proc/self/fd/%d", m->fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0)
		die("readlink");
	path[n] = 0;
	char *slash = strrchr(path, '/');
	if (slash && slash != path)
		*slash = 0;
	if (statx(AT_FDCWD, path, 0, STATX_INO | STATX_MNT_ID, &st))
		die("statx parent");
	struct stat ns;
	snprintf(link, sizeof(link), "/proc/%d/ns/mnt", m->pid);
	if (stat(link, &ns))
		die("stat ns");
}

/* The cheapest possible enforcer: allow everything, no decision at all. */
static void *answer(void *cpu)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct fanotify_event_metadata))));
	struct pollfd p = {.fd = fan, .events = POLLIN};
	if ((long)cpu >= 0)
		pin((int)(long)cpu);
	for (;;) {
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		ssize_t n = read(fan, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) /* another thread took it */
				continue;
			die("read");
		}
		struct fanotify_event_metadata *m = (void *)buf;
		for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
			if (checks)
				check(m);
			struct fanotify_response r = {.fd = m->fd, .response = FAN_ALLOW};
			/* counted before the answer wakes the opener, so its count is complete */
			__atomic_add_fetch(&answered, 1, __ATOMIC_RELAXED);
			if (write(fan, &r, sizeof(r)) != sizeof(r))
				die("write response");
			close(m->fd);
		}
	}
	return NULL;
}

static void once(const char *mode, const char *file, const char *prog)
{
	if (!strncmp(mode, "open", 4)) {
		int fd = open(file, O_RDONLY);
		if (fd < 0)
			die("open");
		close(fd);
		return;
	}
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (!pid) {
		execl(prog, prog, (char *)NULL);
		_exit(127);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		die("child");
}

int main(int argc, char **argv)
{
	long iters = 0;
	const char *placement = "none";
	int opt;
	while ((opt = getopt(argc, argv, "n:p:c")) != -1) {
		if (opt == 'c')
			checks = 1;
		else if (opt == 'n')
			iters = atol(optarg);
		else if (opt == 'p')
			placement = optarg;
		else
			return 2;
	}
	if (argc - optind != 2) {
		fprintf(stderr, "usage: fanfloor [-n ITERS] [-p none|same|other|percpu] [-c] MODE DIR\n");
		return 2;
	}
	const char *mode = argv[optind], *dir = argv[optind + 1];
	int exec_mode = !strncmp(mode, "exec", 4);
	if (!iters)
		iters = exec_mode ? 2000 : 200000;
	char file[4096], prog[4096];
	snprintf(file, sizeof(file), "%s/f", dir);
	snprintf(prog, sizeof(prog), "%s/true", dir);
	if (!strcmp(placement, "same") || !strcmp(placement, "other")) {
		pin(0);
		answer_cpu = !strcmp(placement, "same") ? 0 : 1;
	} else if (strcmp(placement, "none") && strcmp(placement, "percpu")) {
		fprintf(stderr, "fanfloor: -p none|same|other|percpu\n");
		return 2;
	}
	int both = !strcmp(mode, "exec-both");
	if (strstr(mode, "-marked") || both) {
		fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
				    O_RDONLY | O_LARGEFILE);
		if (fan < 0)
			die("fanotify_init");
		unsigned long long mask =
			(exec_mode ? FAN_OPEN_EXEC_PERM : FAN_OPEN_PERM) | FAN_EVENT_ON_CHILD |
			(both ? FAN_OPEN_PERM : 0);
		if (fanotify_mark(fan, FAN_MARK_ADD, mask, AT_FDCWD, dir))
			die("fanotify_mark");
		long cpus = !strcmp(placement, "percpu") ? sysconf(_SC_NPROCESSORS_ONLN) : 1;
		for (long c = 0; c < cpus; c++) {
			pthread_t t;
			long where = !strcmp(placement, "percpu") ? c : answer_cpu;
			if (pthread_create(&t, NULL, answer, (void *)where))
				die("pthread_create");
		}
	} else if (strstr(mode, "-none") == NULL) {
		fprintf(stderr, "fanfloor: unknown mode %s\n", mode);
		return 2;
	}
	for (long i = 0; i < iters / 10; i++)
		once(mode, file, prog);
	unsigned long before = __atomic_load_n(&answered, __ATOMIC_RELAXED);
	double t0 = now_ns();
	for (long i = 0; i < iters; i++)
		once(mode, file, prog);
	double t1 = now_ns();
	printf("ns_per_iter=%.1f events=%lu\n", (t1 - t0) / iters,
	       __atomic_load_n(&answered, __ATOMIC_RELAXED) - before);
	return 0;
}
