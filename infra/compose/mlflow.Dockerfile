# MLflow server with the Postgres driver and the S3 client its proxied artifact store needs.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.*" "psycopg2-binary>=2.9" "boto3>=1.34"
USER nobody
EXPOSE 5000
