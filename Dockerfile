# integrity-target: build with the .NET SDK, run on the plain .NET runtime.
# The entry point is the same `serve --config FILE` command the tests run.
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/IntegrityTarget.Host/IntegrityTarget.Host.csproj -c Release -o /app

FROM mcr.microsoft.com/dotnet/runtime:10.0
COPY --from=build /app /app
# A one-line launcher rather than the apphost, so the runtime is found whatever the image's layout.
RUN printf '#!/bin/sh\nexec dotnet /app/integrity-target.dll "$@"\n' > /usr/local/bin/integrity-target \
 && chmod 755 /usr/local/bin/integrity-target \
 && mkdir -p /etc/integrity-target /var/lib/integrity-target
COPY config/integrity-target.json /etc/integrity-target/integrity-target.json
# Listen on every interface inside the container; keep LUN files on the data volume.
ENV INTEGRITYTARGET_Portals__0=0.0.0.0:3260 \
    INTEGRITYTARGET_DataDirectory=/var/lib/integrity-target \
    DOTNET_CLI_TELEMETRY_OPTOUT=1
WORKDIR /var/lib/integrity-target
VOLUME /var/lib/integrity-target
EXPOSE 3260
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["integrity-target", "status", "--config", "/etc/integrity-target/integrity-target.json"]
ENTRYPOINT ["integrity-target", "serve", "--config", "/etc/integrity-target/integrity-target.json"]
