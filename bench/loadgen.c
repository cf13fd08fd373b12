// SPDX-License-Identifier: Apache-2.0
/*
 * sealtrail benchmark load generator: tight syscall loops timed with clock_gettime, so the
 * cost of a tracepoint or a probe (tens to hundreds of ns) is not drowned by interpreter
 * overhead. Built at bench time by bench/syscall_overhead.py (cc -O2), not by `make test`.
 *
 *   loadgen [-c CPU] [-g CGROUP_DIR] [-r ROUNDS] [-n ITERS] [-d SECONDS [-R RATE]] MODE [ARG]
 *
 *   -g  join the cgroup v2 directory first (write our pid to its cgroup.procs): the policy
 *       benchmark's guard is attached to a cgroup of its own
 *   -R  with -d: pace to RATE iterations per second (ITERS-sized bursts, then sleep until the
 *       schedule catches up); the end-to-end benchmark offers known rates this way
 *
 * MODE
 *   getppid            null syscall: the cost of the syscall slow path alone
 *   open PATH          open(PATH, O_RDONLY) + close        (2 syscalls per iteration)
 *   openfail PATH      open(PATH) failing with ENOENT      (1 syscall per iteration)
 *   stat PATH          stat(PATH)                          (1 syscall: newfstatat)
 *   create PATH        open(PATH, O_CREAT|O_EXCL|O_WRONLY) + close + unlink  (3 syscalls):
 *                      a scratch file made and removed (the LSM path_mknod/path_unlink hooks)
 *   udpconnect PORT    connect() of one UDP socket to 127.0.0.1:PORT (1 syscall; no packet)
 *   tcpconnect PORT    socket + connect to a closed 127.0.0.1:PORT (ECONNREFUSED) + close (3)
 *   tcpaccept          socket + connect + accept + setsockopt(SO_LINGER 0) + close + close
 *                      against a listener of its own on 127.0.0.1 (6 syscalls; the client
 *                      resets, so no TIME_WAIT sockets pile up)
 *   exec PATH          fork + execve(PATH) + waitpid
 *
 * Output: one line per round, "round=<i> iters=<n> ns_per_iter=<x> syscalls_per_iter=<k>",
 * after one untimed warm-up round of n/10 iterations. With -d, runs ITERS-sized rounds until
 * SECONDS have passed and prints one "total iters=<n> secs=<s> warmup=<w>" line (flood mode;
 * warmup = the iterations of the untimed warm-up round, which made syscalls too).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *mode, *arg;
static int udp_fd = -1, listen_fd = -1;
static struct sockaddr_in lo_addr;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void join_cgroup(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		die(path);
	if (fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f))
		die(path);
}

static void sleep_until(double t)
{
	double d = t - now_s();
	if (d <= 0)
		return;
	struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
	nanosleep(&ts, NULL);
}

static int syscalls_per_iter(void)
{
	if (!strcmp(mode, "open"))
		return 2;
	if (!strcmp(mode, "tcpconnect") || !strcmp(mode, "create"))
		return 3;
	if (!strcmp(mode, "tcpaccept"))
		return 6;
	if (!strcmp(mode, "exec"))
		return 0; /* hundreds, and not the point: report per exec */
	return 1;
}

static void run(long iters)
{
	if (!strcmp(mode, "getppid")) {
		for (long i = 0; i < iters; i++)
			syscall(SYS_getppid);
	} else if (!strcmp(mode, "open")) {
		for (long i = 0; i < iters; i++) {
			int fd = open(arg, O_RDONLY);
			if (fd < 0)
				die(arg);
			close(fd);
		}
	} else if (!strcmp(mode, "stat")) {
		struct stat st;
		for (long i = 0; i < iters; i++)
			if (stat(arg, &st))
				die(arg);
	} else if (!strcmp(mode, "openfail")) {
		for (long i = 0; i < iters; i++)
			if (open(arg, O_RDONLY) >= 0)
				die("openfail: path exists");
	} else if (!strcmp(mode, "create")) {
		for (long i = 0; i < iters; i++) {
			int fd = open(arg, O_WRONLY | O_CREAT | O_EXCL, 0600);
			if (fd < 0)
				die(arg);
			close(fd);
			if (unlink(arg))
				die("unlink");
		}
	} else if (!strcmp(mode, "udpconnect")) {
		for (long i = 0; i < iters; i++)
			if (connect(udp_fd, (struct sockaddr *)&lo_addr, sizeof(lo_addr)))
				die("udp connect");
	} else if (!strcmp(mode, "tcpconnect")) {
		for (long i = 0; i < iters; i++) {
			int s = socket(AF_INET, SOCK_STREAM, 0);
			if (s < 0)
				die("socket");
			if (connect(s, (struct sockaddr *)&lo_addr, sizeof(lo_addr)) == 0 ||
			    errno != ECONNREFUSED)
				die("tcp connect: port is not closed");
			close(s);
		}
	} else if (!strcmp(mode, "tcpaccept")) {
		struct linger rst = {1, 0};
		for (long i = 0; i < iters; i++) {
			int c = socket(AF_INET, SOCK_STREAM, 0);
			if (c < 0)
				die("socket");
			if (connect(c, (struct sockaddr *)&lo_addr, sizeof(lo_addr)))
				die("tcp connect to own listener");
			int a = accept(listen_fd, NULL, NULL);
			if (a < 0)
				die("accept");
			/* an RST, not a FIN: no TIME_WAIT socket is left to slow the next port search */
			if (setsockopt(c, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst)))
				die("SO_LINGER");
			close(c);
			close(a);
		}
	} else if (!strcmp(mode, "exec")) {
		for (long i = 0; i < iters; i++) {
			pid_t pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0) {
				char *const argv[] = {(char *)arg, NULL};
				char *const envp[] = {NULL};
				execve(arg, argv, envp);
				_exit(127);
			}
			int status;
			if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
				die("exec child failed");
		}
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	int opt, cpu = -1, rounds = 5;
	long iters = 200000;
	double duration = 0, rate = 0;
	const char *cgroup = NULL;

	while ((opt = getopt(argc, argv, "c:g:r:n:d:R:")) != -1) {
		switch (opt) {
		case 'c': cpu = atoi(optarg); break;
		case 'g': cgroup = optarg; break;
		case 'R': rate = atof(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 'n': iters = atol(optarg); break;
		case 'd': duration = atof(optarg); break;
		default:
			fprintf(stderr,
				"usage: %s [-c cpu] [-g cgroup] [-r rounds] [-n iters] [-d secs [-R rate]] "
				"mode [arg]\n",
				argv[0]);
			return 2;
		}
	}
	if (optind >= argc)
		return fprintf(stderr, "missing mode\n"), 2;
	mode = argv[optind];
	arg = optind + 1 < argc ? argv[optind + 1] : "";

	if (cgroup)
		join_cgroup(cgroup);
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die("sched_setaffinity");
	}
	if (!strcmp(mode, "udpconnect") || !strcmp(mode, "tcpconnect")) {
		lo_addr.sin_family = AF_INET;
		lo_addr.sin_port = htons(atoi(arg));
		lo_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (!strcmp(mode, "udpconnect") && (udp_fd = socket(AF_INET, SOCK_DGRAM, 0)) < 0)
			die("socket");
	}

	if (!strcmp(mode, "tcpaccept")) {
		socklen_t len = sizeof(lo_addr);
		lo_addr.sin_family = AF_INET;
		lo_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if ((listen_fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
		    bind(listen_fd, (struct sockaddr *)&lo_addr, sizeof(lo_addr)) ||
		    listen(listen_fd, 64) ||
		    getsockname(listen_fd, (struct sockaddr *)&lo_addr, &len))
			die("tcpaccept listener");
	}

	long warmup = iters / 10 > 0 ? iters / 10 : 1;
	run(warmup); /* warm-up: caches, dentries, page tables */

	if (duration > 0) {
		long total = 0;
		double t0 = now_s(), t;
		do {
			run(iters);
			total += iters;
			if (rate > 0)
				sleep_until(t0 + total / rate);
			t = now_s();
		} while (t - t0 < duration);
		printf("total iters=%ld secs=%.6f warmup=%ld\n", total, t - t0, warmup);
		return 0;
	}
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s();
		run(iters);
		double dt = now_s() - t0;
		printf("round=%d iters=%ld ns_per_iter=%.1f syscalls_per_iter=%d\n", r, iters,
		       dt * 1e9 / iters, syscalls_per_iter());
		fflush(stdout);
	}
	return 0;
}
