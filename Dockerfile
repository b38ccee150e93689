# syntax=docker/dockerfile:1
# natsbind: Node 24, the compiled dist/ and production dependencies only, running as the
# unprivileged `node` user (uid/gid 1000) of the official image. Build from the repository root:
#   docker build -t natsbind:0.1.0 .
# (This repository's machines have no Docker engine; docs/install.md shows how the image's layout
# is checked without one.)
ARG NODE_IMAGE=node:24.21.0-bookworm-slim

# Compile src/ to dist/ (tsc -p tsconfig.build.json); needs the dev dependencies.
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Runtime dependencies only.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
# Files stay owned by root: the process can read its code but not change it. package.json is
# needed at run time ("type": "module").
COPY --from=deps /app/package.json ./package.json
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist ./dist
USER 1000:1000
EXPOSE 8080
# --max-semi-space-size=16 is src/cli/node-flags.ts NODE_FLAGS: V8 reads it only at start-up.
ENTRYPOINT ["node", "--max-semi-space-size=16", "/app/dist/cli/main.js"]
CMD ["run", "--config", "/etc/natsbind/config/natsbind.yaml"]
