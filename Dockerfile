# syntax=docker/dockerfile:1
#
# pgwarren image. Three stages:
#   build    - dev dependencies, compiles TypeScript to dist/ and bundles dist/cli.js (the same `npm ci` and `npm run build`
#              CI runs; test/unit/dockerfile.test.ts keeps them in step with package.json)
#   examples - the production image plus examples/ (the compose demo consumer and load generator)
#   runtime  - production dependencies only; the default target
# No configuration or secret is baked in: everything comes from PGWARREN_* variables at run time,
# secrets from files through PGWARREN_X_FILE (Docker/compose secrets).

ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/build.mjs ./scripts/
COPY src ./src
RUN npm run build

FROM ${NODE_IMAGE} AS production
# glibc gives each thread that allocates its own malloc arena; Node's GC and I/O threads free
# buffers into them in a pattern that fragments, and RSS stays at its high-water mark. Two arenas
# held the batched throughput bench at ~115 MB instead of 117-161 MB, at no throughput cost.
ENV NODE_ENV=production MALLOC_ARENA_MAX=2
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist

FROM production AS examples
COPY examples ./examples
USER node
STOPSIGNAL SIGTERM
CMD ["node", "examples/consumer.mjs"]

FROM production AS runtime
# The node image's unprivileged user (uid 1000); the app files stay root-owned and read-only to it.
USER node
EXPOSE 9464
# Liveness only: /healthz answers while the process runs. /readyz (both connections up) is for
# orchestrators that route traffic, which nothing does to pgwarren. Follows PGWARREN_HTTP_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PGWARREN_HTTP_PORT||9464)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# On SIGTERM pgwarren stops reading, waits up to PGWARREN_SHUTDOWN_TIMEOUT (default 30 s) for
# outstanding broker confirms, reports the confirmed position and exits 0. Docker's default stop
# timeout is 10 s: give the container longer than PGWARREN_SHUTDOWN_TIMEOUT
# (`docker run --stop-timeout 40`, compose `stop_grace_period: 40s`), or a SIGKILL cuts the drain
# short (nothing is lost then, but unconfirmed messages are sent again on the next start).
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["run"]
