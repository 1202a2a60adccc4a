"""live accuracy: series ids on forecast records, outcomes and forecast scores

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('kronos_forecasts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('series_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('forecast_start', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('forecast_end', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('reference', sa.JSON(), nullable=True))
        batch_op.create_index('ix_forecasts_series', ['series_id', 'forecast_end'], unique=False)

    op.create_table('kronos_outcomes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('series_id', sa.String(length=255), nullable=False),
    sa.Column('timestamp', sa.DateTime(), nullable=False),
    sa.Column('candle', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_id', 'timestamp', name='uq_outcomes_series_time')
    )
    op.create_table('kronos_forecast_scores',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('forecast_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.String(length=255), nullable=False),
    sa.Column('model_version', sa.String(length=255), nullable=False),
    sa.Column('timestamp', sa.DateTime(), nullable=False),
    sa.Column('forecast_created_at', sa.DateTime(), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('scored_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('forecast_id', 'step', name='uq_scores_forecast_step')
    )
    with op.batch_alter_table('kronos_forecast_scores', schema=None) as batch_op:
        batch_op.create_index('ix_scores_version_created', ['model_version', 'forecast_created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('kronos_forecast_scores', schema=None) as batch_op:
        batch_op.drop_index('ix_scores_version_created')
    op.drop_table('kronos_forecast_scores')
    op.drop_table('kronos_outcomes')
    with op.batch_alter_table('kronos_forecasts', schema=None) as batch_op:
        batch_op.drop_index('ix_forecasts_series')
        batch_op.drop_column('reference')
        batch_op.drop_column('forecast_end')
        batch_op.drop_column('forecast_start')
        batch_op.drop_column('series_id')
