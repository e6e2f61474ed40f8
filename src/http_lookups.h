/* http_lookups.h - name lookups of http transfers, by host, so that lookups
 * a stopped transfer left running on libcurl's resolver threads are bounded.
 * Pure bookkeeping (no libcurl), so its rules are unit-tested. */
#ifndef JOBD_HTTP_LOOKUPS_H
#define JOBD_HTTP_LOOKUPS_H

#include <stdbool.h>
#include <stddef.h>

struct lookup_host;

struct lookups {
    struct lookup_host *hosts;  /* those with a lookup going; unordered */
    int n, cap;
    int abandoned;              /* left running by stopped transfers, all hosts */
};

/* A transfer's lookup of HOST began; -1 out of memory (then not counted). */
int lookups_begin(struct lookups *l, const char *host);
/* HOST's lookup ended (ABANDONED: one counted by lookups_abandon). */
void lookups_end(struct lookups *l, const char *host, bool abandoned);
/* The transfer looking HOST up was stopped; its lookup goes on alone. */
void lookups_abandon(struct lookups *l, const char *host);

/* Whether a new transfer to HOST may start, given MAX abandoned lookups at
 * most (http.max_abandoned_lookups): false when MAX are left running, or when
 * HOST has lookups abandoned and, with those, max/4 (at least 1) going. On
 * false, WHY (SIZE bytes) says which. */
bool lookups_admit(const struct lookups *l, const char *host, int max, char *why, size_t size);

/* Host names only: an IP address in a URL is never looked up. */
bool lookups_needed(const char *host);

void lookups_free(struct lookups *l);

#endif
