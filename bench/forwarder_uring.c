/* forwarder_uring.c: bench/forwarder.c's one-to-one TCP forwarder on io_uring, for bench/floor.sh.
 *
 * Same job as forwarder.c (every client connection gets its own upstream connection, bytes go
 * through unchanged, no parsing, pooling, timers or TLS), but each socket always has one
 * operation in the ring: a recv on it, or a send of what it read to its peer. Completions of all
 * connections are handled together and the next operations go in with the same io_uring_enter,
 * so with many busy clients the process enters the kernel less than once per socket operation.
 * What it spends per transaction is the least a proxy built on io_uring could spend.
 *
 *   cc -O2 -o forwarder_uring bench/forwarder_uring.c -luring && ./forwarder_uring LISTEN UPSTREAM
 *
 * Both ports on 127.0.0.1. Not a product: closes a pair on any error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAXFD 65536
#define OP_ACCEPT 0u
#define OP_RECV 1u
#define OP_SEND 2u

struct end {
    int peer;        /* the other socket of the pair, -1 when free */
    int busy;        /* an operation on this end's buffer is in the ring */
    int dead;        /* the pair is closing: no new operations */
    size_t len, off; /* bytes read and not yet sent to the peer */
    char *buf;
};

static struct end ends[MAXFD];
static struct io_uring ring;
static struct sockaddr_in up;

static struct io_uring_sqe *sqe_for(int fd, unsigned op) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) {
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
    }
    io_uring_sqe_set_data64(s, ((uint64_t)(unsigned)fd << 2) | op);
    return s;
}

static void post_recv(int fd) {
    ends[fd].busy = 1;
    io_uring_prep_recv(sqe_for(fd, OP_RECV), fd, ends[fd].buf, BUF, 0);
}

/* Sends what fd read to its peer; the completion comes back tagged with fd (the buffer's end). */
static void post_send(int fd) {
    struct end *e = &ends[fd];
    e->busy = 1;
    io_uring_prep_send(sqe_for(fd, OP_SEND), e->peer, e->buf + e->off, e->len - e->off, MSG_NOSIGNAL);
}

static void post_accept(int lfd) { io_uring_prep_accept(sqe_for(lfd, OP_ACCEPT), lfd, NULL, NULL, 0); }

/* Ends the pair: shutdown wakes any operation in the ring; the sockets close once none is left. */
static void kill_pair(int fd) {
    int fds[2] = {fd, ends[fd].peer};
    for (int i = 0; i < 2; i++) {
        if (fds[i] < 0 || ends[fds[i]].dead) continue;
        ends[fds[i]].dead = 1;
        shutdown(fds[i], SHUT_RDWR);
    }
    if (!ends[fd].busy && !ends[ends[fd].peer].busy) {
        int peer = ends[fd].peer;
        for (int i = 0; i < 2; i++) {
            int f = i ? peer : fd;
            free(ends[f].buf);
            ends[f] = (struct end){.peer = -1};
            close(f);
        }
    }
}

static void accepted(int lfd, int c) {
    post_accept(lfd);
    if (c < 0) return;
    int one = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c >= MAXFD || s < 0 || s >= MAXFD || connect(s, (struct sockaddr *)&up, sizeof up) < 0) {
        close(c);
        if (s >= 0) close(s);
        return;
    }
    ends[c] = (struct end){.peer = s, .buf = malloc(BUF)};
    ends[s] = (struct end){.peer = c, .buf = malloc(BUF)};
    post_recv(c);
    post_recv(s);
}

static void completed(int fd, unsigned op, int res) {
    struct end *e = &ends[fd];
    e->busy = 0;
    if (e->dead || res <= 0) {
        kill_pair(fd);
        return;
    }
    if (op == OP_RECV) {
        e->len = (size_t)res;
        e->off = 0;
        post_send(fd);
    } else {
        e->off += (size_t)res;
        if (e->off < e->len) post_send(fd);
        else post_recv(fd);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: forwarder_uring LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    up = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &up.sin_addr);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        perror("forwarder_uring: listen");
        return 1;
    }
    for (int i = 0; i < MAXFD; i++) ends[i].peer = -1;
    /* Task work runs only when this thread enters the ring: completions come in batches. */
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int rc = io_uring_queue_init_params(4096, &ring, &p);
    if (rc < 0) rc = io_uring_queue_init(4096, &ring, 0);
    if (rc < 0) {
        fprintf(stderr, "forwarder_uring: io_uring_queue_init: %s\n", strerror(-rc));
        return 1;
    }
    post_accept(lfd);
    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t d = io_uring_cqe_get_data64(cqe);
            int fd = (int)(d >> 2);
            unsigned op = (unsigned)(d & 3);
            if (op == OP_ACCEPT) accepted(fd, cqe->res);
            else completed(fd, op, cqe->res);
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
    }
}
