/* The attack probe's socket check (inkmcp/nodes/attacks.py): GET /_ping on the Docker API over the unix socket
 * given as argv[1] (default /var/run/docker.sock) and print the reply. Exit 0 only on "OK". Static: it is
 * copied into images that have no libc. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/var/run/docker.sock";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 2;
    }
    const char *req = "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    if (write(fd, req, strlen(req)) < 0) {
        perror("write");
        return 2;
    }
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)n;
    buf[got] = 0;
    fputs(buf, stdout);
    char *body = strstr(buf, "\r\n\r\n");
    return body && strcmp(body + 4, "OK") == 0 ? 0 : 1;
}
