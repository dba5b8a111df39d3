# source infra/compose/env.sh — client settings for the docker compose stack (defaults of docker-compose.yml)
export PREFECT_API_URL=http://127.0.0.1:${VAURA_PREFECT_PORT:-4200}/api
export MLFLOW_TRACKING_URI=http://127.0.0.1:${VAURA_MLFLOW_PORT:-5000}
export AWS_ACCESS_KEY_ID=${VAURA_S3_USER:-vaura}
export AWS_SECRET_ACCESS_KEY=${VAURA_S3_PASSWORD:-vaura-secret}
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:${VAURA_S3_PORT:-9100}
export MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL_S3
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
