/* resolve_shim.c - LD_PRELOAD for test_http.py: a host name whose first
 * address is private and whose second is public, with the public one
 * reachable in a test. jobd's address policy is checked per address tried,
 * so this is how a test sees a transfer go out after a refused address.
 *
 * getaddrinfo("private-then-public.test") answers 10.255.255.1, then
 * 203.0.113.1 (TEST-NET-3: public to the policy, routed nowhere); connect()
 * to 203.0.113.1 goes to 127.0.0.1 instead, same port, and getpeername() on
 * such a socket says 203.0.113.1, as it would had the address been reached
 * (jobd judges a connection again by its peer before each request).
 * getaddrinfo("slow-dns.test") fails after 3 s. Everything else passes through. Built by the test with `cc -shared -fPIC`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HOST "private-then-public.test"
#define SLOW_HOST "slow-dns.test"
#define PRIVATE "10.255.255.1"
#define PUBLIC "203.0.113.1"

static int (*real_getaddrinfo)(const char *, const char *, const struct addrinfo *,
                               struct addrinfo **);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_getpeername)(int, struct sockaddr *, socklen_t *);

/* Sockets whose connect() was sent to loopback in place of PUBLIC. */
#define MAX_FD 4096
static volatile char redirected[MAX_FD];

/* Looked up once, before any thread (libcurl resolves on its own threads). */
__attribute__((constructor)) static void init(void)
{
    real_getaddrinfo = dlsym(RTLD_NEXT, "getaddrinfo");
    real_connect = dlsym(RTLD_NEXT, "connect");
    real_getpeername = dlsym(RTLD_NEXT, "getpeername");
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    if (node && !strcmp(node, SLOW_HOST)) {
        sleep(3);       /* a name server that answers late */
        return EAI_AGAIN;
    }
    if (!node || strcmp(node, HOST))
        return real_getaddrinfo(node, service, hints, res);
    struct addrinfo h;
    memset(&h, 0, sizeof(h));
    h.ai_family = AF_INET;
    h.ai_socktype = hints && hints->ai_socktype ? hints->ai_socktype : SOCK_STREAM;
    h.ai_flags = AI_NUMERICHOST | (hints ? hints->ai_flags & AI_NUMERICSERV : 0);
    struct addrinfo *first, *second, *last;
    int rc = real_getaddrinfo(PRIVATE, service, &h, &first);
    if (rc)
        return rc;
    if ((rc = real_getaddrinfo(PUBLIC, service, &h, &second))) {
        freeaddrinfo(first);
        return rc;
    }
    /* glibc's freeaddrinfo frees node by node, so the two lists may be joined. */
    for (last = first; last->ai_next; last = last->ai_next)
        ;
    last->ai_next = second;
    *res = first;
    return 0;
}

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    struct in_addr public;
    inet_pton(AF_INET, PUBLIC, &public);
    if (sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in) &&
        ((const struct sockaddr_in *)sa)->sin_addr.s_addr == public.s_addr) {
        struct sockaddr_in to = *(const struct sockaddr_in *)sa;
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd >= 0 && fd < MAX_FD)
            redirected[fd] = 1;
        return real_connect(fd, (const struct sockaddr *)&to, sizeof(to));
    }
    if (fd >= 0 && fd < MAX_FD)
        redirected[fd] = 0;
    return real_connect(fd, sa, len);
}

int getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
    int rc = real_getpeername(fd, sa, len);
    if (rc == 0 && fd >= 0 && fd < MAX_FD && redirected[fd] && sa->sa_family == AF_INET &&
        *len >= sizeof(struct sockaddr_in))
        inet_pton(AF_INET, PUBLIC, &((struct sockaddr_in *)sa)->sin_addr);
    return rc;
}
