/* forwarder.c: the least a proxy in the middle can cost, for bench/floor.sh.
 *
 * A one-to-one TCP forwarder: every client connection gets its own connection to the upstream,
 * and bytes go through unchanged, in both directions, with one epoll loop on one thread,
 * level-triggered, one recv and one send per readable socket (as PgBouncer and pgshift do per
 * message). No parsing, no pooling, no timers, no TLS: what it spends per transaction is the
 * kernel's work for the socket calls any proxy must make, plus a few hundred instructions.
 *
 *   cc -O2 -o forwarder bench/forwarder.c && ./forwarder LISTEN_PORT UPSTREAM_PORT
 *
 * Both on 127.0.0.1. Not a product: no back-pressure beyond the buffer, closes a pair on any
 * error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAXFD 65536

struct end {
    int peer;          /* the other socket of the pair */
    size_t len, off;   /* bytes held for the peer that it could not take yet */
    char *buf;
};

static struct end ends[MAXFD];
static int ep;

static void watch(int fd, unsigned events, int op) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, op, fd, &ev);
}

static void close_pair(int fd) {
    int peer = ends[fd].peer;
    int fds[2] = {fd, peer};
    for (int i = 0; i < 2; i++) {
        if (fds[i] < 0) continue;
        epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
        close(fds[i]);
        free(ends[fds[i]].buf);
        ends[fds[i]] = (struct end){.peer = -1};
    }
}

static int tcp_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void accept_one(int lfd, struct sockaddr_in *up) {
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    if (c < 0) return;
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int s = tcp_socket();
    if (c >= MAXFD || s >= MAXFD || (connect(s, (struct sockaddr *)up, sizeof *up) < 0 && errno != EINPROGRESS)) {
        close(c);
        close(s);
        return;
    }
    ends[c] = (struct end){.peer = s, .buf = malloc(BUF)};
    ends[s] = (struct end){.peer = c, .buf = malloc(BUF)};
    watch(c, EPOLLIN, EPOLL_CTL_ADD);
    watch(s, EPOLLIN, EPOLL_CTL_ADD);
}

/* fd is readable: one recv, one send to the peer; what the peer cannot take waits for EPOLLOUT
 * on the peer, and fd is not read again until it is gone. */
static void relay(int fd) {
    struct end *e = &ends[fd];
    struct end *p = &ends[e->peer];
    ssize_t n = recv(fd, e->buf, BUF, 0);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN) return;
        close_pair(fd);
        return;
    }
    ssize_t w = send(e->peer, e->buf, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) {
        close_pair(fd);
        return;
    }
    if (w < 0) w = 0;
    if (w < n) {
        memmove(p->buf, e->buf + w, (size_t)(n - w)); /* held on the peer's side */
        p->len = (size_t)(n - w);
        p->off = 0;
        watch(fd, 0, EPOLL_CTL_MOD);
        watch(e->peer, EPOLLOUT, EPOLL_CTL_MOD);
    }
}

/* fd can take the bytes held for it. */
static void drain(int fd) {
    struct end *e = &ends[fd];
    ssize_t w = send(fd, e->buf + e->off, e->len - e->off, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN) close_pair(fd);
        return;
    }
    e->off += (size_t)w;
    if (e->off == e->len) {
        e->len = e->off = 0;
        watch(fd, EPOLLIN, EPOLL_CTL_MOD);
        watch(e->peer, EPOLLIN, EPOLL_CTL_MOD);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: forwarder LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    struct sockaddr_in up = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &up.sin_addr);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        perror("forwarder: listen");
        return 1;
    }
    for (int i = 0; i < MAXFD; i++) ends[i].peer = -1;
    ep = epoll_create1(0);
    watch(lfd, EPOLLIN, EPOLL_CTL_ADD);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                accept_one(lfd, &up);
            } else if (ends[fd].peer >= 0) {
                if (evs[i].events & EPOLLOUT) drain(fd);
                else if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) relay(fd);
            }
        }
    }
}
