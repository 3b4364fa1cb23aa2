/* Static probe for a tenant's RUN step (tests/buildpath/test_build_docker.py): what can a build reach?
 *
 *   buildprobe tcp HOST:PORT ...                 -> "tcp HOST:PORT open|refused|timeout|unreachable"
 *   buildprobe https HOST:PORT METHOD PATH ...   -> "https HOST:PORT METHOD PATH -> STATUS" (or the failure)
 *
 * Arguments are consumed in groups, so one RUN line probes everything. HTTPS does not verify the
 * certificate: the question is what the registry answers a client holding no credentials, which is
 * exactly what a RUN step is. Always exits 0; the test judges the printed lines. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dial(const char *hostport, const char **verdict) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) { *verdict = "bad-address"; return -1; }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { *verdict = "bad-address"; return -1; }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 3000) != 1) { close(fd); *verdict = "timeout"; return -1; }
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        errno = err;
        rc = err ? -1 : 0;
    }
    if (rc != 0) {
        *verdict = errno == ECONNREFUSED ? "refused" : (errno == EHOSTUNREACH || errno == ENETUNREACH) ? "unreachable"
                                                                                                         : strerror(errno);
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, 0);
    *verdict = "open";
    return fd;
}

/* SSL_connect/SSL_write/SSL_read, retried while OpenSSL wants the socket readable or writable: gVisor's runsc
 * 20221219 (Debian 12) does not clear O_NONBLOCK on a host-network socket (fcntl F_SETFL 0 in dial), so a step
 * under it sees EAGAIN where a blocking read would wait (tests/buildpath/test_build_sandboxed.py). */
static int ssl_wait(SSL *ssl, int fd, int rc) {
    int err = SSL_get_error(ssl, rc);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return 0;
    struct pollfd p = {.fd = fd, .events = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
    return poll(&p, 1, 3000) == 1;
}

#define SSL_RETRY(call) ({ int rc_, n_ = 0; do { rc_ = (call); } while (rc_ <= 0 && n_++ < 100 && ssl_wait(ssl, fd, rc_)); rc_; })

static void https(const char *hostport, const char *method, const char *path) {
    const char *verdict;
    int fd = dial(hostport, &verdict);
    printf("https %s %s %s -> ", hostport, method, path);
    if (fd < 0) { printf("%s\n", verdict); return; }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_RETRY(SSL_connect(ssl)) != 1) {
        printf("tls-failed\n");
    } else {
        char req[1024];
        snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                 method, path, hostport);
        SSL_RETRY(SSL_write(ssl, req, (int)strlen(req)));
        char buf[512];
        int n = SSL_RETRY(SSL_read(ssl, buf, sizeof buf - 1));
        buf[n > 0 ? n : 0] = 0;
        char *eol = strstr(buf, "\r\n");
        if (eol) *eol = 0;
        /* "HTTP/1.1 401 Unauthorized" -> the status code */
        char *sp = strchr(buf, ' ');
        printf("%.3s\n", sp ? sp + 1 : "no-response");
        SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc;) {
        if (strcmp(argv[i], "tcp") == 0 && i + 1 < argc) {
            const char *verdict;
            int fd = dial(argv[i + 1], &verdict);
            if (fd >= 0) close(fd);
            printf("tcp %s %s\n", argv[i + 1], verdict);
            i += 2;
        } else if (strcmp(argv[i], "https") == 0 && i + 3 < argc) {
            https(argv[i + 1], argv[i + 2], argv[i + 3]);
            i += 4;
        } else {
            fprintf(stderr, "usage: buildprobe (tcp HOST:PORT | https HOST:PORT METHOD PATH)...\n");
            return 2;
        }
    }
    return 0;
}
