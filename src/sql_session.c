/* sql_session.c - what one SQL statement may leave on its session (see
 * sql_session.h). Only the text is read: no parser, so it errs towards
 * flagging (a flagged statement costs some pipelining, not correctness). */
#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "sql_session.h"

/* P past blanks, comments (block comments nest in PostgreSQL) and opening
 * parentheses: where the statement's first keyword starts. */
static const char *skip_noise(const char *p)
{
    for (;;) {
        while (isspace((unsigned char)*p) || *p == '(')
            p++;
        if (p[0] == '-' && p[1] == '-') {
            p += strcspn(p, "\n");
        } else if (p[0] == '/' && p[1] == '*') {
            int depth = 1;
            for (p += 2; *p && depth; p++) {
                if (p[0] == '/' && p[1] == '*')
                    depth++, p++;
                else if (p[0] == '*' && p[1] == '/')
                    depth--, p++;
            }
        } else {
            return p;
        }
    }
}

/* Whether the keyword at P is WORD (any case); *END past it when so. */
static bool keyword(const char *p, const char *word, const char **end)
{
    size_t n = strlen(word);
    if (strncasecmp(p, word, n) || isalnum((unsigned char)p[n]) || p[n] == '_')
        return false;
    *end = p + n;
    return true;
}

/* CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP | TEMPORARY ...: P after CREATE. */
static bool creates_temp(const char *p)
{
    const char *end;
    p = skip_noise(p);
    if (keyword(p, "OR", &end)) {
        p = skip_noise(end);
        if (keyword(p, "REPLACE", &end))
            p = skip_noise(end);
    }
    if (keyword(p, "GLOBAL", &end) || keyword(p, "LOCAL", &end))
        p = skip_noise(end);
    return keyword(p, "TEMP", &end) || keyword(p, "TEMPORARY", &end);
}

/* SELECT ... INTO TEMP | TEMPORARY t anywhere in SQL (a table named temp
 * after an INSERT INTO is flagged too: the safe side). */
static bool selects_into_temp(const char *sql)
{
    const char *end;
    for (const char *p = sql; (p = strcasestr(p, "into")); p += 4) {
        if (p > sql && (isalnum((unsigned char)p[-1]) || p[-1] == '_'))
            continue;
        if (!keyword(p, "INTO", &end))
            continue;
        const char *next = skip_noise(end);
        if (keyword(next, "TEMP", &end) || keyword(next, "TEMPORARY", &end))
            return true;
    }
    return false;
}

unsigned sql_session_effects(const char *sql)
{
    /* Statements that change the session by what they are (the command
     * tags left_session_changed() in pgpool.c looks for too); DO and CALL
     * run code that may do anything. */
    static const char *const stateful[] = {"BEGIN", "START", "SAVEPOINT", "SET", "RESET",
                                           "LISTEN", "PREPARE", "DEALLOCATE", "DECLARE",
                                           "DISCARD", "LOAD", NULL};
    const char *p = skip_noise(sql), *end;
    unsigned effects = 0;
    for (int i = 0; stateful[i]; i++)
        if (keyword(p, stateful[i], &end))
            effects |= SQL_SESSION_STATE;
    if (keyword(p, "DO", &end) || keyword(p, "CALL", &end))
        effects |= SQL_SESSION_ANY;
    if (keyword(p, "CREATE", &end) && creates_temp(end))
        effects |= SQL_SESSION_STATE;
    /* Functions that change the session from inside any statement. The
     * transaction-scoped locks are pg_advisory_xact_lock(): no match. */
    /* A temporary table made by SELECT INTO, or named in the session's own
     * temporary schema. */
    if (selects_into_temp(sql) || strcasestr(sql, "pg_temp."))
        effects |= SQL_SESSION_STATE;
    if (strcasestr(sql, "set_config"))
        effects |= SQL_SESSION_STATE;
    if (strcasestr(sql, "advisory_lock"))
        effects |= SQL_SESSION_LOCK;
    return effects;
}
