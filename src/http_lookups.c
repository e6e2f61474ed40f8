/* http_lookups.c - lookups going, by host name (see http_lookups.h).
 *
 * Why: libcurl 7.88 looks each name up on a thread of its own, and jobd sets
 * CURLOPT_QUICK_EXIT so that stopping a transfer mid-lookup does not join
 * that thread (a stalled loop). exec_http.c keeps such a transfer in the
 * multi handle until its lookup ends, and counts it here; a producer sending
 * many short jobs to a name whose server never answers then meets a cap
 * instead of growing a thread per attempt. A host becomes suspect only once
 * one of its lookups was abandoned: others, looked up as fast as ever, are
 * not held back by it. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_lookups.h"

struct lookup_host {
    char *name;
    int going;                  /* lookups running, abandoned ones included */
    int abandoned;
};

static struct lookup_host *find(const struct lookups *l, const char *host)
{
    for (int i = 0; i < l->n; i++)
        if (!strcasecmp(l->hosts[i].name, host))
            return &l->hosts[i];
    return NULL;
}

int lookups_begin(struct lookups *l, const char *host)
{
    struct lookup_host *h = find(l, host);
    if (!h) {
        if (l->n == l->cap) {
            int cap = l->cap ? 2 * l->cap : 16;
            struct lookup_host *grown = realloc(l->hosts, (size_t)cap * sizeof(*grown));
            if (!grown)
                return -1;
            l->hosts = grown;
            l->cap = cap;
        }
        char *name = strdup(host);
        if (!name)
            return -1;
        h = &l->hosts[l->n++];
        *h = (struct lookup_host){.name = name};
    }
    h->going++;
    return 0;
}

void lookups_end(struct lookups *l, const char *host, bool abandoned)
{
    struct lookup_host *h = find(l, host);
    if (!h)
        return;
    if (abandoned && h->abandoned > 0) {
        h->abandoned--;
        l->abandoned--;
    }
    if (--h->going > 0)
        return;
    free(h->name);
    *h = l->hosts[--l->n];      /* unordered: the last one fills the hole */
}

void lookups_abandon(struct lookups *l, const char *host)
{
    struct lookup_host *h = find(l, host);
    if (h) {
        h->abandoned++;
        l->abandoned++;
    }
}

bool lookups_admit(const struct lookups *l, const char *host, int max, char *why, size_t size)
{
    if (l->abandoned >= max) {
        snprintf(why, size,
                 "%d name lookups abandoned by stopped transfers are still unanswered "
                 "(http.max_abandoned_lookups = %d)",
                 l->abandoned, max);
        return false;
    }
    const struct lookup_host *h = find(l, host);
    int per_host = max / 4 > 1 ? max / 4 : 1;
    if (h && h->abandoned && h->going >= per_host) {
        snprintf(why, size,
                 "%d lookups of %.200s are still unanswered, %d of them abandoned by stopped "
                 "transfers (at most %d for such a host: http.max_abandoned_lookups / 4)",
                 h->going, host, h->abandoned, per_host);
        return false;
    }
    return true;
}

bool lookups_needed(const char *host)
{
    unsigned char addr[16];
    return *host != '[' && inet_pton(AF_INET, host, addr) != 1;
}

void lookups_free(struct lookups *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->hosts[i].name);
    free(l->hosts);
    *l = (struct lookups){0};
}
