# Production image: PostgreSQL through QIAO_DATABASE_URL, several uvicorn workers.
#   docker build -t qiao .
#   docker run -p 8080:8080 -e QIAO_DATABASE_URL=postgresql://qiao@db:5432/qiao -e QIAO_WORKERS=4 qiao
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY adapters ./adapters
COPY migrations ./migrations
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 qiao
COPY --from=build /install /usr/local
USER qiao
WORKDIR /home/qiao
ENV QIAO_DATA_DIR=/home/qiao/var \
    QIAO_WORKERS=4 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 2575
# `qiao serve` migrates the schema first; set QIAO_DATABASE_URL to PostgreSQL in production.
# Every FHIR request needs a SMART Backend Services token: register clients with `qiao client add` (see README).
CMD ["qiao", "serve", "--host", "0.0.0.0", "--port", "8080"]
