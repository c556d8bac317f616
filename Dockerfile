# Multi-stage: build wheels with the toolchain, run from a slim image without it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home teller
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV TELLER_LISTEN=0.0.0.0:7402
EXPOSE 7402
ENTRYPOINT ["teller"]
CMD ["serve"]
