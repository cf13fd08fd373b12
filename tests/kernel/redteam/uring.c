/* Red-team helper: openat (optionally after a linked mkdirat) through io_uring, then write(2).
 * usage: uring open PATH            -> open(PATH, O_WRONLY|O_APPEND) through io_uring, write "x"
 *        uring mkopen DIR FILE       -> mkdirat(DIR) linked with openat(DIR/FILE, O_WRONLY|O_CREAT)
 * prints "written" on success, "errno N" on a failed open. No liburing: raw syscalls. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ring_fd;
static struct io_uring_sqe *sqes;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_cqe *cqes;

static void setup(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    ring_fd = syscall(__NR_io_uring_setup, 8, &p);
    if (ring_fd < 0) { perror("io_uring_setup"); exit(2); }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) { perror("mmap"); exit(2); }
    sq_tail = (unsigned *)(sq + p.sq_off.tail); sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head); cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask); cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static struct io_uring_sqe *get_sqe(void) {
    unsigned t = *sq_tail, i = t & *sq_mask;
    struct io_uring_sqe *s = &sqes[i];
    memset(s, 0, sizeof(*s));
    sq_array[i] = i;
    __atomic_store_n(sq_tail, t + 1, __ATOMIC_RELEASE);
    return s;
}

static int submit_wait(unsigned n, int *res) {
    int r = syscall(__NR_io_uring_enter, ring_fd, n, n, IORING_ENTER_GETEVENTS, NULL, 0);
    if (r < 0) { perror("io_uring_enter"); exit(2); }
    for (unsigned k = 0; k < n; k++) {
        while (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head)
            syscall(__NR_io_uring_enter, ring_fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        struct io_uring_cqe *c = &cqes[*cq_head & *cq_mask];
        res[c->user_data] = c->res;
        __atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
    }
    return 0;
}

int main(int argc, char **argv) {
    int res[2] = {0, 0};
    setup();
    if (argc == 3 && !strcmp(argv[1], "open")) {
        struct io_uring_sqe *s = get_sqe();
        s->opcode = IORING_OP_OPENAT; s->fd = AT_FDCWD; s->addr = (unsigned long)argv[2];
        s->open_flags = O_WRONLY | O_APPEND; s->user_data = 0;
        submit_wait(1, res);
    } else if (argc == 4 && !strcmp(argv[1], "mkopen")) {
        static char path[4096];
        snprintf(path, sizeof(path), "%s/%s", argv[2], argv[3]);
        struct io_uring_sqe *s = get_sqe();
        s->opcode = IORING_OP_MKDIRAT; s->fd = AT_FDCWD; s->addr = (unsigned long)argv[2];
        s->len = 0755; s->flags = IOSQE_IO_LINK; s->user_data = 1;
        s = get_sqe();
        s->opcode = IORING_OP_OPENAT; s->fd = AT_FDCWD; s->addr = (unsigned long)path;
        s->open_flags = O_WRONLY | O_CREAT; s->len = 0644; s->user_data = 0;
        submit_wait(2, res);
        if (res[1] < 0) { printf("mkdir errno %d\n", -res[1]); return 1; }
    } else {
        fprintf(stderr, "usage\n"); return 2;
    }
    if (res[0] < 0) { printf("errno %d\n", -res[0]); return 1; }
    if (write(res[0], "x", 1) != 1) { printf("write errno %d\n", errno); return 1; }
    printf("written\n");
    return 0;
}
