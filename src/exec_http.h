/* exec_http.h - the "http" type's set-up, and its address policy for tests. */
#ifndef JOBD_EXEC_HTTP_H
#define JOBD_EXEC_HTTP_H

#include <stdbool.h>
#include <sys/socket.h>

struct daemon;

/* One libcurl multi handle on the daemon's loop; -1 when libcurl fails. */
int http_executor_init(struct daemon *d);
void http_executor_shutdown(struct daemon *d);

/* For /metrics: sockets libcurl has open and watched, transfers running,
 * jobs waiting for a transfer slot. */
void http_counts(int *sockets, int *transfers, int *waiting);

/* Loopback, private, shared, link-local, unique-local, multicast, reserved,
 * and IPv4 in IPv6 disguise of those: refused unless http.allow_private. */
bool http_address_is_private(const struct sockaddr *sa);

#endif
