/*
 * mpi_file_probe PATTERN: what does each rank see of the shared directory?
 *
 * Every rank runs glob(3) on PATTERN, the way sagecal-mpi's workers glob
 * their -f pattern. A relative PATTERN is taken under the share
 * ($ASTRO_SHARE, default /share). Rank 0 prints one JSON line per rank, in
 * rank order:
 *
 *   {"rank": 0, "host": "c-master-1", "files": ["/share/a.MS", ...]}
 *
 * A glob error (not "no match") adds "error" to that rank's line and makes
 * every rank exit 1.
 */
#define _GNU_SOURCE /* asprintf */
#include <glob.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(out, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(out, "\\u%04x", (unsigned char)*s);
        else
            fputc(*s, out);
    }
    fputc('"', out);
}

/* The pattern as this rank should glob it: relative ones live under the share. */
static char *absolute_pattern(const char *pattern)
{
    const char *share = getenv("ASTRO_SHARE");
    char *full = NULL;

    if (pattern[0] == '/')
        return strdup(pattern);
    if (share == NULL || share[0] == '\0')
        share = "/share";
    if (asprintf(&full, "%s/%s", share, pattern) < 0)
        return NULL;
    return full;
}

/* This rank's JSON line (malloc'ed, with '\n'); *failed is set on a glob error. */
static char *probe(int rank, const char *pattern, int *failed)
{
    char host[MPI_MAX_PROCESSOR_NAME] = "";
    char *line = NULL;
    size_t line_len = 0;
    glob_t found;
    int len;

    MPI_Get_processor_name(host, &len);
    FILE *out = open_memstream(&line, &line_len);
    if (out == NULL)
        return NULL;

    int rc = glob(pattern, 0, NULL, &found);
    *failed = rc != 0 && rc != GLOB_NOMATCH;

    fprintf(out, "{\"rank\": %d, \"host\": ", rank);
    print_json_string(out, host);
    fputs(", \"files\": [", out);
    for (size_t i = 0; rc == 0 && i < found.gl_pathc; i++) {
        fputs(i > 0 ? ", " : "", out);
        print_json_string(out, found.gl_pathv[i]);
    }
    fputc(']', out);
    if (*failed)
        fprintf(out, ", \"error\": \"glob failed (%s)\"",
                rc == GLOB_NOSPACE ? "out of memory" : "read error");
    fputs("}\n", out);
    fclose(out);
    if (rc == 0)
        globfree(&found);
    return line;
}

int main(int argc, char **argv)
{
    int rank, size, failed = 0, any_failed = 0;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 2) {
        if (rank == 0)
            fprintf(stderr, "usage: mpi_file_probe PATTERN  (relative to $ASTRO_SHARE, default /share)\n");
        MPI_Finalize();
        return 2;
    }

    char *pattern = absolute_pattern(argv[1]);
    char *line = pattern ? probe(rank, pattern, &failed) : NULL;
    if (line == NULL) {
        fprintf(stderr, "mpi_file_probe: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    /* Lines have different lengths: gather the lengths, then the text. */
    int len = (int)strlen(line);
    int *lens = NULL, *offsets = NULL;
    char *all = NULL;
    if (rank == 0) {
        lens = calloc((size_t)size, sizeof *lens);
        offsets = calloc((size_t)size, sizeof *offsets);
        if (lens == NULL || offsets == NULL) {
            fprintf(stderr, "mpi_file_probe: out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    MPI_Gather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        int total = 0;
        for (int r = 0; r < size; r++) {
            offsets[r] = total;
            total += lens[r];
        }
        all = malloc((size_t)total + 1);
        if (all == NULL) {
            fprintf(stderr, "mpi_file_probe: out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        all[total] = '\0';
    }
    MPI_Gatherv(line, len, MPI_CHAR, all, lens, offsets, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        fputs(all, stdout);
        fflush(stdout);
    }
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);

    free(all);
    free(offsets);
    free(lens);
    free(line);
    free(pattern);
    MPI_Finalize();
    return any_failed ? 1 : 0;
}
