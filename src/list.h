/* list.h - an intrusive doubly linked list, oldest first.
 *
 * A struct embeds one struct list_link per list it can be on; the list holds
 * links, and list_entry() turns a link back into its struct. Appending and
 * removing anywhere are O(1), so waiting jobs, outstanding Redis calls and
 * admin connections share this instead of each writing its own.
 */
#ifndef JOBD_LIST_H
#define JOBD_LIST_H

#include <stddef.h>

struct list_link {
    struct list_link *prev, *next;
};

struct list {
    struct list_link *head, *tail;
};

#define list_entry(link, type, member) ((type *)((char *)(link) - offsetof(type, member)))

static inline void list_append(struct list *l, struct list_link *n)
{
    n->next = NULL;
    n->prev = l->tail;
    if (l->tail)
        l->tail->next = n;
    else
        l->head = n;
    l->tail = n;
}

/* N must be on L. */
static inline void list_remove(struct list *l, struct list_link *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = NULL;
}

#endif
