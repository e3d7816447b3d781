# syntax=docker/dockerfile:1
# One image per service: docker build --build-arg SERVICE=build -t conveyor-build .
# Services run their TypeScript through tsx (see docs/adr/0003-typescript-without-a-build-step.md).
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git bash ca-certificates tar util-linux iptables \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g pnpm@12.4.2
WORKDIR /app
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml turbo.json tsconfig.base.json ./
COPY packages ./packages
COPY apps ./apps
RUN pnpm install --frozen-lockfile && chown -R node:node /app \
 && mkdir -p /data/artifacts /data/deployments /data/source-cache /data/work /data/tmp && chown -R node:node /data \
 && chmod 0700 /data/tmp
ARG SERVICE
RUN test -f "apps/${SERVICE}/src/main.ts" || (echo "SERVICE must name one of apps/*" && exit 1)
ENV SERVICE=${SERVICE} HOST=0.0.0.0 ARTIFACT_DIR=/data/artifacts
USER node
EXPOSE 7001 7002 7003 7004 7005
# PORT when set, else the service's default (a plain `docker run` sets none).
HEALTHCHECK --interval=10s --timeout=3s CMD node -e "const p=process.env.PORT||{'source-webhook':7001,build:7002,'test-runner':7003,deployer:7004,monitor:7005}[process.env.SERVICE];fetch('http://127.0.0.1:'+p+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["sh", "-c", "exec node --import tsx apps/${SERVICE}/src/main.ts"]
