/* exec_group.h - the "group" type: child jobs run concurrently. */
#ifndef JOBD_EXEC_GROUP_H
#define JOBD_EXEC_GROUP_H

#include "job.h"

#define GROUP_MAX_CHILDREN 1000     /* in one group */
#define GROUP_MAX_DEPTH 4           /* groups inside groups, the outer one counted */
#define GROUP_MAX_TOTAL 10000       /* jobs in one whole tree */

/* Child INDEX of GROUP, or NULL when GROUP is not a group or has no such
 * child. */
struct job *group_child(struct job *group, int index);

/* Called by the runner when a child reached its final outcome. */
void group_child_done(struct job *child);

#endif
