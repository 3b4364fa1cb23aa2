/*
 * inkmcp-spawn: confine the calling process as a tenant's, then exec the tenant's command.
 *
 * Why it exists: InkMCP used to confine tenant processes in a Python preexec_fn, which forces
 * CPython to fork() the whole server (~130 MB of page tables copied per spawn). The server now
 * starts this small static program with vfork() (no preexec_fn, no user=), and it performs the
 * same steps, in the same order, before the tenant's code runs (see inkmcp/build/process.py):
 *
 *   0. reads the tenant's environment from --env-fd (a memfd) and closes it: this program itself
 *      runs with an EMPTY environment, so nothing the tenant set (LD_PRELOAD, GLIBC_TUNABLES, ...)
 *      can influence it while it is still root; it is linked statically, so no loader runs anyway;
 *   1. RLIMIT_CORE=0 and RLIMIT_FSIZE (--fsize); with --oom-score-adj N (0-1000), the OOM killer's preference
 *      for this process raised to N, which its children inherit (why: inkmcp/build/process.py, step 1b);
 *   2. joins the service's cgroups (--cgroup, one per v1 controller): whatever the tenant forks,
 *      even before its first line of code, starts inside them;
 *   3. with --tmp: a private mount namespace (propagation cut with MS_SLAVE), an empty read-only
 *      tmpfs (mode 000) over each --hide DIR first (the project's git mirrors, which the tenant's uid
 *      owns but its code must not reach: why in inkmcp/build/process.py, step 3), the service's tmp dir
 *      on /tmp and on each --var-tmp (/var/tmp, /run/lock: the host's other world-writable dirs),
 *      a size-capped tmpfs on /dev/shm, a proc with hidepid=2 (best effort), and a private IPC
 *      namespace: SysV shm, queues and semaphores and POSIX queues of its own, freed when its last
 *      process exits (why: inkmcp/build/process.py, step 3b);
 *   4. drops to the tenant (--ids UID:GID): setgroups(0), setresgid, setresuid, then PR_SET_NO_NEW_PRIVS;
 *   4a. with --ids (not --kill-all): a session keyring of its own, empty, the tenant's (why: inkmcp/build/process.py,
 *      step 4a; --- redteam5);
 *   4b. with --ids (not --kill-all): a Landlock domain of its own scoped to abstract unix sockets and
 *      signals, when the kernel has Landlock ABI 6 (Linux 6.12+; else skipped): it connects only to abstract
 *      sockets made inside the domain and signals only its own process tree (why: inkmcp/build/process.py,
 *      step 4b); with ABI 2-5, a domain that refuses nothing a tenant could do, for Landlock's ptrace rule alone
 *      (--- redteam5);
 *   5. chdir (--chdir) as the tenant: root never resolves a tenant-owned path;
 *   6. closes every fd above 2 and execs the command with the tenant's environment, searching the
 *      tenant's PATH.
 *
 * A failure in 0-5 writes "inkmcp: could not start the process in its sandbox: <step>: <reason>"
 * to stderr and exits 126 (nothing of the tenant ran); a command that cannot be executed exits 127
 * (not found) or 126, like a shell would. Session, umask and the std streams are set by the caller.
 *
 * With --wait-fd N (no --env-fd, --chdir or command): a start prepared ahead of need. Steps 1-4 run at
 * once (the slow ones: joining a cgroup waits for an RCU grace period, 4-11 ms here), then the process
 * blocks reading one message from fd N: a 4-byte little-endian length, then the working directory, the
 * argv entries and an empty entry, then the environment entries, each NUL-terminated. With it, steps 5
 * and 6 run as above. End of file before a message (InkMCP closed its end, or exited) exits 0 and runs
 * nothing. While it waits it is already the tenant's uid but not dumpable (its ids changed from root),
 * so the tenant's other processes cannot ptrace it or open its fds.
 *
 * With --kill-all (and --ids), no command: after the drop it SIGKILLs every process the tenant may
 * signal, in one pass inside the kernel (kill(-1)), and exits 0; how a project's processes are ended
 * when the project is deleted (users.py), without forking the server for it.
 *
 * Usage: inkmcp-spawn [--env-fd N] [--fsize BYTES] [--oom-score-adj N] [--cgroup PROCS_FILE]... [--hide DIR]...
 *        [--tmp DIR [--var-tmp PATH] [--shm PATH --shm-options OPTS] [--hide-pids]] [--ids UID:GID]
 *        [--chdir DIR] -- COMMAND [ARG]...
 *        inkmcp-spawn [--fsize ...same confinement options...] --wait-fd N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SANDBOX_EXIT 126
#define MAX_CGROUPS 16
#define MAX_HIDDEN 8
#define MAX_VAR_TMPS 32 /* --- quota: /var/tmp and the host's other world-writable dirs (/run/lock, ...) */
#define MAX_ENV_BYTES (16 * 1024 * 1024)

extern char **environ;

static void say(const char *a, const char *b, const char *c) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s%s%s\n", a, b, c);
    if (n > 0) {
        ssize_t ignored = write(2, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
        (void)ignored;
    }
}

static void fail(const char *step, int err) {
    char reason[512];
    snprintf(reason, sizeof reason, "%s: %s", step, strerror(err));
    say("inkmcp: could not start the process in its sandbox: ", reason, "");
    _exit(SANDBOX_EXIT);
}

static void usage(const char *why) {
    say("inkmcp: could not start the process in its sandbox: inkmcp-spawn: ", why, "");
    _exit(SANDBOX_EXIT);
}

static unsigned long long number(const char *s, const char *what) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') usage(what);
    return v;
}

/* The tenant's environment: NUL-terminated KEY=VALUE entries, read whole from the memfd. */
static char **read_env(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) fail("reading the environment", errno);
    if (st.st_size < 0 || st.st_size > MAX_ENV_BYTES) fail("reading the environment", E2BIG);
    size_t size = (size_t)st.st_size;
    char *data = malloc(size + 1);
    if (data == NULL) fail("reading the environment", ENOMEM);
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, data + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("reading the environment", n < 0 ? errno : EIO);
        got += (size_t)n;
    }
    data[size] = '\0';
    close(fd);
    size_t count = 0;
    for (size_t i = 0; i < size; i++) count += data[i] == '\0';
    char **envp = calloc(count + 2, sizeof(char *));
    if (envp == NULL) fail("reading the environment", ENOMEM);
    size_t k = 0;
    for (size_t i = 0; i < size;) {
        size_t len = strlen(data + i);
        if (len > 0) envp[k++] = data + i;
        i += len + 1;
    }
    envp[k] = NULL;
    return envp;
}

/* Split a message's NUL-terminated entries into an array (NULL-terminated) starting at data[*at]; an empty
 * entry ends the list when stop_at_empty is set (argv), else the end of the data does (environment). */
static char **entries(char *data, size_t size, size_t *at, int stop_at_empty) {
    size_t count = 0;
    for (size_t i = *at; i < size; i++) count += data[i] == '\0';
    char **list = calloc(count + 2, sizeof(char *));
    if (list == NULL) fail("reading the start message", ENOMEM);
    size_t k = 0;
    while (*at < size) {
        size_t len = strlen(data + *at);
        char *entry = data + *at;
        *at += len + 1;
        if (len == 0) {
            if (stop_at_empty) break;
            continue;
        }
        list[k++] = entry;
    }
    list[k] = NULL;
    return list;
}

/* Block until InkMCP sends the start message on fd; returns 0 with the parts filled, 1 on end of file. */
static int read_start(int fd, char **cwd, char ***command, char ***envp) {
    unsigned char head[4];
    size_t got = 0;
    while (got < sizeof head) {
        ssize_t n = read(fd, head + got, sizeof head - got);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 && got == 0) return 1;
        if (n <= 0) fail("reading the start message", n < 0 ? errno : EIO);
        got += (size_t)n;
    }
    size_t size = (size_t)head[0] | (size_t)head[1] << 8 | (size_t)head[2] << 16 | (size_t)head[3] << 24;
    if (size == 0 || size > 2 * (size_t)MAX_ENV_BYTES) fail("reading the start message", E2BIG);
    char *data = malloc(size + 1);
    if (data == NULL) fail("reading the start message", ENOMEM);
    got = 0;
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("reading the start message", n < 0 ? errno : EIO);
        got += (size_t)n;
    }
    data[size] = '\0';
    close(fd);
    size_t at = strlen(data) + 1;
    *cwd = data;
    *command = entries(data, size, &at, 1);
    *envp = entries(data, size, &at, 0);
    if ((*command)[0] == NULL) fail("reading the start message", EINVAL);
    return 0;
}

static void check(int rc, const char *step) {
    if (rc != 0) fail(step, errno);
}

/* --- redteam5: step 4a. Without it the process kept InkMCP's own session keyring (systemd's KeyringMode=private,
 * pam_keyinit), which it possesses after the uid change: it read root's keys there and shared the keyring with every
 * other tenant. ENOSYS (a kernel without keys) or EPERM (a seccomp profile refusing keyctl to everyone): no process
 * here has keyrings at all, nothing to leave behind. */
static void own_keyring(void) {
    if (syscall(SYS_keyctl, 1L /* KEYCTL_JOIN_SESSION_KEYRING */, NULL) >= 0) return;
    if (errno == ENOSYS || errno == EPERM) return;
    fail("joining a session keyring of its own", errno);
}
/* --- end */

/* --- landlock: step 4b. Our own struct and numbers: no dependency on the build host's kernel headers (the
 * syscall numbers are the same on every architecture). */
#define LANDLOCK_CREATE_RULESET 444
#define LANDLOCK_RESTRICT_SELF 446
#define LANDLOCK_VERSION_FLAG 1UL /* LANDLOCK_CREATE_RULESET_VERSION */
#define LANDLOCK_SCOPE_ABI 6
struct scope_attr {
    unsigned long long handled_access_fs, handled_access_net, scoped;
};

/* --- redteam5: ABI 2-5 (Linux 5.19-6.11): a domain all the same, for its ptrace rule (why: inkmcp/build/process.py,
 * step 4b). It handles only making block devices (no tenant may anyway: no CAP_MKNOD) and reparenting (REFER, which
 * any fs-handling ruleset handles implicitly), the latter granted beneath "/" again: nothing a tenant could do before
 * is refused. */
#define LANDLOCK_ADD_RULE 445
#define LANDLOCK_RULE_PATH_BENEATH 1
#define LANDLOCK_ACCESS_FS_MAKE_BLOCK (1ULL << 11)
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
struct path_beneath_attr {
    unsigned long long allowed_access;
    int parent_fd;
} __attribute__((packed));

static void ptrace_domain(void) {
    unsigned long long handled = LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_REFER; /* handled_access_fs */
    long fd = syscall(LANDLOCK_CREATE_RULESET, &handled, sizeof handled, 0UL);
    if (fd < 0) fail("entering a Landlock domain", errno);
    int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) fail("entering a Landlock domain", errno);
    struct path_beneath_attr rule = {LANDLOCK_ACCESS_FS_REFER, root};
    check((int)syscall(LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, &rule, 0UL), "entering a Landlock domain");
    close(root);
    check((int)syscall(LANDLOCK_RESTRICT_SELF, fd, 0UL), "entering a Landlock domain");
    close((int)fd);
}
/* --- end */

static void scope(void) {
    long abi = syscall(LANDLOCK_CREATE_RULESET, NULL, 0UL, LANDLOCK_VERSION_FLAG);
    if (abi >= 2 && abi < LANDLOCK_SCOPE_ABI) ptrace_domain(); /* --- redteam5 */
    if (abi < LANDLOCK_SCOPE_ABI) return; /* an older kernel or Landlock off: continue without (doctor says so) */
    struct scope_attr attr = {0, 0, 1 | 2}; /* LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL */
    long fd = syscall(LANDLOCK_CREATE_RULESET, &attr, sizeof attr, 0UL);
    if (fd < 0) fail("scoping abstract unix sockets and signals", errno);
    check((int)syscall(LANDLOCK_RESTRICT_SELF, fd, 0UL), "scoping abstract unix sockets and signals");
    close((int)fd);
}
/* --- end */

int main(int argc, char **argv) {
    int env_fd = -1, wait_fd = -1, hide_pids = 0, have_ids = 0, have_fsize = 0, kill_all = 0;
    unsigned long long fsize = 0;
    const char *oom_score_adj = NULL;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups = 0;
    const char *var_tmps[MAX_VAR_TMPS];
    int nvar_tmps = 0;
    const char *hidden[MAX_HIDDEN];
    int nhidden = 0;
    const char *tmp = NULL, *shm = NULL, *shm_options = NULL, *cwd = NULL;
    uid_t uid = 0;
    gid_t gid = 0;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) { i++; break; }
        if (strcmp(a, "--hide-pids") == 0) { hide_pids = 1; continue; }
        if (strcmp(a, "--kill-all") == 0) { kill_all = 1; continue; }
        if (i + 1 >= argc) usage("an option is missing its value");
        const char *v = argv[++i];
        if (strcmp(a, "--env-fd") == 0) env_fd = (int)number(v, "--env-fd takes a file descriptor");
        else if (strcmp(a, "--wait-fd") == 0) wait_fd = (int)number(v, "--wait-fd takes a file descriptor");
        else if (strcmp(a, "--fsize") == 0) { fsize = number(v, "--fsize takes bytes"); have_fsize = 1; }
        else if (strcmp(a, "--oom-score-adj") == 0) {
            if (number(v, "--oom-score-adj takes 0-1000") > 1000) usage("--oom-score-adj takes 0-1000");
            oom_score_adj = v;
        }
        else if (strcmp(a, "--cgroup") == 0) {
            if (ncgroups == MAX_CGROUPS) usage("too many --cgroup");
            cgroups[ncgroups++] = v;
        }
        else if (strcmp(a, "--tmp") == 0) tmp = v;
        else if (strcmp(a, "--hide") == 0) {
            if (nhidden == MAX_HIDDEN) usage("too many --hide");
            hidden[nhidden++] = v;
        }
        else if (strcmp(a, "--var-tmp") == 0) {
            if (nvar_tmps == MAX_VAR_TMPS) usage("too many --var-tmp");
            var_tmps[nvar_tmps++] = v;
        }
        else if (strcmp(a, "--shm") == 0) shm = v;
        else if (strcmp(a, "--shm-options") == 0) shm_options = v;
        else if (strcmp(a, "--chdir") == 0) cwd = v;
        else if (strcmp(a, "--ids") == 0) {
            char *colon = strchr(v, ':');
            if (colon == NULL) usage("--ids takes UID:GID");
            *colon = '\0';
            uid = (uid_t)number(v, "--ids takes UID:GID");
            gid = (gid_t)number(colon + 1, "--ids takes UID:GID");
            have_ids = 1;
        }
        else usage("unknown option");
    }
    if (nhidden > 0 && tmp == NULL) usage("--hide needs --tmp (the mount namespace)");
    if (kill_all && (!have_ids || uid == 0)) usage("--kill-all needs --ids with a uid other than 0");
    if (wait_fd >= 0 && (kill_all || env_fd >= 0 || cwd != NULL || i < argc))
        usage("--wait-fd takes the directory, command and environment from its message");
    if (i >= argc && !kill_all && wait_fd < 0) usage("no command after --");
    char **command = argv + i;

    char *empty[] = {NULL};
    char **envp = env_fd >= 0 ? read_env(env_fd) : empty;

    struct rlimit none = {0, 0};
    check(setrlimit(RLIMIT_CORE, &none), "setting resource limits");
    if (have_fsize) {
        struct rlimit cap = {(rlim_t)fsize, (rlim_t)fsize};
        check(setrlimit(RLIMIT_FSIZE, &cap), "setting resource limits");
    }
    if (oom_score_adj != NULL) { /* raising needs no privilege; as root with CAP_SYS_RESOURCE it is also the floor */
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd < 0) fail("raising the OOM score", errno);
        size_t n = strlen(oom_score_adj);
        if (write(fd, oom_score_adj, n) != (ssize_t)n) fail("raising the OOM score", errno);
        close(fd);
    }
    for (int c = 0; c < ncgroups; c++) {
        /* "0" moves the writing process itself */
        int fd = open(cgroups[c], O_WRONLY | O_CLOEXEC);
        if (fd < 0) fail("joining the service's cgroup", errno);
        if (write(fd, "0", 1) != 1) fail("joining the service's cgroup", errno);
        close(fd);
    }
    if (tmp != NULL) {
        check(unshare(CLONE_NEWNS), "entering a private mount namespace");
        check(unshare(CLONE_NEWIPC), "entering a private IPC namespace");
        check(mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL), "making mounts private");
        for (int k = 0; k < nhidden; k++) /* before /tmp is replaced: the path may lie under the host's /tmp */
            check(mount("tmpfs", hidden[k], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        "size=4k,nr_inodes=1,mode=000"), "hiding the project's git mirrors");
        check(mount(tmp, "/tmp", NULL, MS_BIND, NULL), "mounting the private /tmp");
        for (int k = 0; k < nvar_tmps; k++) /* the same dir: /tmp now is it (the source may lie under /tmp) */
            check(mount("/tmp", var_tmps[k], NULL, MS_BIND, NULL), "mounting /var/tmp");
        if (shm != NULL)
            check(mount("tmpfs", shm, "tmpfs", MS_NOSUID | MS_NODEV, shm_options ? shm_options : ""),
                  "mounting a private /dev/shm");
        if (hide_pids) /* best effort, as in the Python path */
            (void)mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2");
    }
    if (have_ids) {
        check(setgroups(0, NULL), "switching to the project's user");
        check(setresgid(gid, gid, gid), "switching to the project's user");
        check(setresuid(uid, uid, uid), "switching to the project's user");
        if (!kill_all) own_keyring(); /* --- redteam5: step 4a, as the tenant (the keyring is its own) */
        /* no setuid-root or file-capability binary gives the tenant more than its own rights */
        check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "forbidding new privileges");
        if (!kill_all) scope(); /* --- landlock: --kill-all must signal outside any domain */
    }
    if (kill_all) {
        if (kill(-1, SIGKILL) != 0 && errno != ESRCH) fail("killing the user's processes", errno);
        _exit(0);
    }
    if (wait_fd >= 0) {
        char *given_cwd = NULL;
        if (read_start(wait_fd, &given_cwd, &command, &envp) != 0) _exit(0); /* not needed after all */
        cwd = given_cwd;
    }
    if (cwd != NULL && chdir(cwd) != 0) {
        char step[4096];
        snprintf(step, sizeof step, "entering the working directory %s", cwd);
        fail(step, errno);
    }
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    {
        for (int fd = 3; fd < 1024; fd++) close(fd);
    }
    environ = envp;
    execvp(command[0], command);
    int err = errno;
    char reason[512];
    snprintf(reason, sizeof reason, ": %s", strerror(err));
    say("inkmcp: could not run ", command[0], reason);
    _exit(err == ENOENT ? 127 : 126);
}
