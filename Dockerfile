# syntax=docker/dockerfile:1
# Build with dev dependencies, run with production ones only. The steps are the same ones CI
# runs (npm ci, npm run build, npm ci --omit=dev), so a green CI means this image builds.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force
COPY --from=build /app/dist ./dist
USER node
EXPOSE 9464
# Readiness needs both connections; liveness only needs the process to answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PGWARREN_HTTP_PORT||9464)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM drains outstanding confirms (PGWARREN_SHUTDOWN_TIMEOUT, default 30 s); give compose
# a longer stop_grace_period than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["run"]
