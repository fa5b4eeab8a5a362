/* The pod sandbox's first process: holds the pod's namespaces open, reaps orphans, and exits on
 * SIGINT/SIGTERM. Written for pgop's offline images (no registry to pull a pause image from). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pgop-pause 1.0");
        return 0;
    }
    if (getpid() != 1) fprintf(stderr, "pgop-pause: warning: not PID 1\n");
    struct sigaction term = {.sa_handler = on_term};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &term, NULL) || sigaction(SIGTERM, &term, NULL) ||
        sigaction(SIGCHLD, &child, NULL)) {
        perror("sigaction");
        return 1;
    }
    for (;;) pause();
}
