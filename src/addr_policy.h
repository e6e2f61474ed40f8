/* addr_policy.h - which peer addresses http jobs may connect to unless
 * http.allow_private: pure functions, so the edges are unit-tested. */
#ifndef JOBD_ADDR_POLICY_H
#define JOBD_ADDR_POLICY_H

#include <stdbool.h>
#include <sys/socket.h>

/* Loopback, private, shared, link-local, unique-local, multicast, reserved,
 * and IPv4 in IPv6 disguise of those: refused unless http.allow_private.
 * A family other than IPv4 or IPv6 counts as private. */
bool addr_is_private(const struct sockaddr *sa);

/* The same for an address as text (libcurl's primary IP); one that cannot be
 * read counts as private. */
bool addr_text_is_private(const char *ip);

#endif
