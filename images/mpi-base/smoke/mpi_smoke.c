/*
 * mpi_smoke: proves that an MPI job really spans the cluster.
 *
 * Every rank reports its host name to rank 0 (MPI_Gather), a token goes once
 * around the ring of all ranks (point-to-point between every neighbour pair),
 * and an Allreduce sums a 512 KiB vector (large enough for the rendezvous
 * protocol, so the TCP and shared-memory transports both carry real data).
 * Rank 0 prints one JSON line:
 *
 *   {"size": 4, "hosts": ["a", "a", "b", "b"], "ring_ok": true,
 *    "allreduce_ok": true, "seconds": 0.012}
 *
 * "hosts" is indexed by rank. Every rank exits 1 if any check failed.
 *
 * A waiting rank sleeps between looks (wait_gently) instead of spinning in
 * MPI_Wait: the smoke test runs while a cluster may hold many more ranks than
 * cores (the paper's 1000 containers on 12 servers; 200 on 2 cores here),
 * where spinning ranks starve the ones with work to do and the container
 * engines' heartbeats. Open MPI's mpi_yield_when_idle is not enough: a
 * yielding rank stays runnable and Linux still gives it its time slice.
 *
 * Open MPI's own waits are made gentle too (see usleep below): the fences of
 * MPI_Init and MPI_Finalize, where a rank waits until mpirun has started every
 * other rank (seconds to minutes with hundreds of containers on a few cores).
 */
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VECTOR_LEN (64 * 1024) /* doubles: 512 KiB */

static double vector[VECTOR_LEN];
static double summed[VECTOR_LEN];

/*
 * How long a waiting rank sleeps at most between two looks: 0.1 ms per rank
 * of the job (mpirun tells each rank the job's size), from 2 ms up to 50 ms.
 * The whole job then wakes up about 10 000 times a second however many ranks
 * it has (up to 500; 25 000 at 1250): at 10 x 200 on 2 cores a fixed 2 ms kept
 * ~180 ranks runnable (100 000 wake-ups a second, each an MPI_Test and a
 * sched_yield) and the smoke test did not end in 320 s on a slow day. A rank
 * that waits long answers at most one pause late: the token ring and the
 * allreduce's 2 x (size - 1) rounds take about size x pause (4 s at 200 ranks,
 * 25 ms at 12).
 */
#define PAUSE_PER_RANK_NS 100000L
#define SHORTEST_LONGEST_PAUSE_NS 2000000L
#define LONGEST_LONGEST_PAUSE_NS 50000000L

static long longest_pause_ns(void)
{
    static long pause_ns = 0;
    if (pause_ns == 0) {
        const char *size = getenv("OMPI_COMM_WORLD_SIZE");
        long ranks = size ? atol(size) : 1;
        pause_ns = ranks * PAUSE_PER_RANK_NS;
        if (pause_ns < SHORTEST_LONGEST_PAUSE_NS)
            pause_ns = SHORTEST_LONGEST_PAUSE_NS;
        if (pause_ns > LONGEST_LONGEST_PAUSE_NS)
            pause_ns = LONGEST_LONGEST_PAUSE_NS;
    }
    return pause_ns;
}

/*
 * Open MPI 4.1 waits for its runtime (OMPI_LAZY_WAIT_FOR_COMPLETION: the
 * fences in MPI_Init and MPI_Finalize) by calling opal_progress() and then
 * usleep(100), over and over: 10 000 wake-ups a second per rank. At 10 hosts x
 * 200 ranks on 2 cores the ranks that started first kept about 180 processes
 * runnable (load 1000) while mpirun was still starting the rest, the container
 * engines missed their heartbeats and the Swarm moved every task. This
 * program's usleep (exported, so that libmpi's calls resolve to it) sleeps at
 * least 5 ms, and at least the longest pause above in a large job.
 */
#define SHORTEST_USLEEP_US 5000L

int usleep(useconds_t usec)
{
    long shortest = longest_pause_ns() / 1000L;
    if (shortest < SHORTEST_USLEEP_US)
        shortest = SHORTEST_USLEEP_US;
    if ((long)usec < shortest)
        usec = (useconds_t)shortest;
    struct timespec pause = {usec / 1000000, (long)(usec % 1000000) * 1000L};
    while (nanosleep(&pause, &pause) != 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Pauses between two looks at a pending request: from 20 us, doubling, to longest_pause_ns(). */
#define FIRST_PAUSE_NS 20000L

/* MPI_Wait without spinning: MPI_Test (which also moves the transfer on), then
 * a pause that grows while nothing arrives. */
static void wait_gently(MPI_Request *request)
{
    long pause_ns = FIRST_PAUSE_NS;
    int done = 0;
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    while (!done) {
        struct timespec pause = {0, pause_ns};
        nanosleep(&pause, NULL);
        pause_ns *= 2;
        if (pause_ns > longest_pause_ns())
            pause_ns = longest_pause_ns();
        MPI_Test(request, &done, MPI_STATUS_IGNORE);
    }
}

static void send_gently(const void *buffer, int count, MPI_Datatype type, int to, int tag)
{
    MPI_Request request;
    MPI_Isend(buffer, count, type, to, tag, MPI_COMM_WORLD, &request);
    wait_gently(&request);
}

static void receive_gently(void *buffer, int count, MPI_Datatype type, int from, int tag)
{
    MPI_Request request;
    MPI_Irecv(buffer, count, type, from, tag, MPI_COMM_WORLD, &request);
    wait_gently(&request);
}

static void allreduce_gently(const void *in, void *out, int count, MPI_Datatype type, MPI_Op op)
{
    MPI_Request request;
    MPI_Iallreduce(in, out, count, type, op, MPI_COMM_WORLD, &request);
    wait_gently(&request);
}

/* Print s as a JSON string (host names are plain, but be correct anyway). */
static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

/*
 * Rank 0 sends 0 to rank 1; every rank checks that it received the sum of
 * the ranks before it, adds its own rank and passes it on; rank 0 finally
 * receives 0 + 1 + ... + (size - 1). Returns 1 if this rank's check passed.
 */
static int ring_pass(int rank, int size)
{
    const int tag = 7;
    long token = 0;

    if (size == 1)
        return 1;
    if (rank == 0) {
        send_gently(&token, 1, MPI_LONG, 1, tag);
        receive_gently(&token, 1, MPI_LONG, size - 1, tag);
        return token == (long)size * (size - 1) / 2;
    }
    receive_gently(&token, 1, MPI_LONG, rank - 1, tag);
    int ok = token == (long)rank * (rank - 1) / 2;
    token += rank;
    send_gently(&token, 1, MPI_LONG, (rank + 1) % size, tag);
    return ok;
}

/* Element i of rank r is i + r, so the sum is i * size + size (size - 1) / 2,
 * exact in double for these magnitudes. Returns 1 if every element matches. */
static int allreduce_check(int rank, int size)
{
    for (int i = 0; i < VECTOR_LEN; i++)
        vector[i] = (double)i + rank;
    allreduce_gently(vector, summed, VECTOR_LEN, MPI_DOUBLE, MPI_SUM);
    for (int i = 0; i < VECTOR_LEN; i++) {
        double expected = (double)i * size + (double)size * (size - 1) / 2;
        if (summed[i] != expected)
            return 0;
    }
    return 1;
}

/* 1 only if every rank passed. */
static int all_ranks(int ok)
{
    int all = 0;
    allreduce_gently(&ok, &all, 1, MPI_INT, MPI_LAND);
    return all;
}

int main(int argc, char **argv)
{
    int rank, size, name_len;
    char name[MPI_MAX_PROCESSOR_NAME] = "";
    static char names[4096][MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    double start = MPI_Wtime();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 4096) {
        if (rank == 0)
            fprintf(stderr, "mpi_smoke: at most 4096 ranks (got %d)\n", size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    MPI_Get_processor_name(name, &name_len);

    MPI_Request gathered;
    MPI_Igather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME,
                MPI_CHAR, 0, MPI_COMM_WORLD, &gathered);
    wait_gently(&gathered);
    int ring_ok = all_ranks(ring_pass(rank, size));
    int allreduce_ok = all_ranks(allreduce_check(rank, size));
    double seconds = MPI_Wtime() - start;

    if (rank == 0) {
        printf("{\"size\": %d, \"hosts\": [", size);
        for (int r = 0; r < size; r++) {
            if (r > 0)
                printf(", ");
            print_json_string(names[r]);
        }
        printf("], \"ring_ok\": %s, \"allreduce_ok\": %s, \"seconds\": %.6f}\n",
               ring_ok ? "true" : "false", allreduce_ok ? "true" : "false", seconds);
        fflush(stdout);
    }
    MPI_Finalize();
    return ring_ok && allreduce_ok ? 0 : 1;
}
